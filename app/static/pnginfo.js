// "PNG Info" (as in A1111): every PNG this service makes carries what made it, as JSON in an iTXt chunk
// with the keyword "flux-service" (GenerationResult.png_bytes in pipelines/types.py). This reads it back
// from a file the user opens or drops, so its settings can be restored. Pure parsing: no page state here.

export const PNG_KEYWORD = "flux-service";
const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export class PngInfoError extends Error {}

async function inflate(bytes) { // zlib stream (iTXt compression method 0)
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The text of the iTXt chunk named `keyword`, or null. Throws PngInfoError when the file is not a PNG. */
export async function readItxt(buffer, keyword = PNG_KEYWORD) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((b, i) => bytes[i] !== b)) {
    throw new PngInfoError("这不是 PNG 文件 · This is not a PNG file");
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  let at = 8;
  while (at + 12 <= bytes.length) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    at += 12 + length;
    if (type === "IEND") break;
    if (type !== "iTXt") continue;
    // keyword \0 compression-flag compression-method language \0 translated-keyword \0 text
    const k = data.indexOf(0);
    if (k < 0 || latin1.decode(data.subarray(0, k)) !== keyword) continue;
    const compressed = data[k + 1] === 1;
    const lang = data.indexOf(0, k + 3);
    const translated = data.indexOf(0, lang + 1);
    if (lang < 0 || translated < 0) throw new PngInfoError("PNG 参数块损坏 · The PNG's parameter chunk is damaged");
    const text = data.subarray(translated + 1);
    return new TextDecoder("utf-8").decode(compressed ? await inflate(text) : text);
  }
  return null;
}

/** The generation info a PNG made by this service carries ({prompt, task, seed, ...}). */
export async function readPngInfo(file) {
  const text = await readItxt(await file.arrayBuffer());
  if (text == null) {
    throw new PngInfoError(`这张 PNG 不含本服务的参数（没有 “${PNG_KEYWORD}” 文本块）· ` +
      `This PNG carries no settings from this service (no "${PNG_KEYWORD}" text chunk)`);
  }
  let info;
  try { info = JSON.parse(text); } catch (_) {
    throw new PngInfoError("PNG 里的参数不是有效的 JSON · The PNG's settings are not valid JSON");
  }
  // seeds go up to 2**63-1: keep the exact digits (a JS number would round seeds above 2**53)
  const exact = text.match(/"seed":\s*(\d+)/);
  if (exact) info.seed = exact[1];
  return info;
}
