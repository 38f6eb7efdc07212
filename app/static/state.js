// The page's one state object, shared by the form, the runs and the recent strip.

export const state = { tasks: [], limits: null, ready: false, busy: false, cancelling: false, active: [], recent: [], shown: null };
