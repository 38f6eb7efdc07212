// Server-sent events over fetch(): yields {event, data} per message; data is parsed JSON when it is JSON.
// (EventSource cannot send the Authorization header, so the stream is read from a fetch Response.)

export async function* readEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let text = buf + decoder.decode(value, { stream: true });
      const trailingCR = text.endsWith("\r"); // a "\r\n" may be split across chunks
      if (trailingCR) text = text.slice(0, -1);
      buf = text.replace(/\r\n|\r/g, "\n") + (trailingCR ? "\r" : "");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
        }
        if (!data.length && event === "message") continue;
        let parsed = data.join("\n");
        try { parsed = JSON.parse(parsed); } catch (_) { /* plain text */ }
        yield { event, data: parsed };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
