// Image bytes -> RGB pixels the way dcclip.runtime decodes them (PIL open, EXIF transpose, to_rgb).
//
// PNG is decoded here, not by the browser: a canvas premultiplies alpha (the colour under transparent pixels is lost,
// while PIL's RGBA -> RGB keeps it) and reduces 16-bit samples its own way. Other formats go through
// createImageBitmap with EXIF orientation applied and no colour management (PIL ignores ICC profiles too).

const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

export function isPNG(bytes) {
  return PNG_SIGNATURE.every((value, i) => bytes[i] === value);
}

async function inflate(chunks) {
  const stream = new Blob(chunks).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function readChunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunks = { IDAT: [] };
  for (let at = 8; at + 8 <= bytes.length; ) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IDAT") chunks.IDAT.push(data);
    else if (!(type in chunks)) chunks[type] = data;
    if (type === "IEND") break;
    at += 12 + length;
  }
  if (!chunks.IHDR) throw new Error("PNG without an IHDR chunk");
  return chunks;
}

function unfilter(raw, height, stride, bpp) {
  const out = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = out.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? out.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? row[i - bpp] : 0, b = prev[i], c = i >= bpp ? prev[i - bpp] : 0;
      let p = 0;
      if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else if (filter === 4) {
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new Error(`PNG row ${y} has unknown filter ${filter}`);
      row[i] = (line[i] + p) & 255;
    }
  }
  return out;
}

// One sample of a row as PIL reads it: 16-bit keeps the high byte except 16-bit grey (kept whole, see to_rgb).
function sampler(rows, stride, depth) {
  if (depth === 16) return (y, i) => rows[y * stride + 2 * i] * 256 + rows[y * stride + 2 * i + 1];
  if (depth === 8) return (y, i) => rows[y * stride + i];
  const perByte = 8 / depth, mask = (1 << depth) - 1;
  return (y, i) => (rows[y * stride + Math.floor(i / perByte)] >> (8 - depth * (1 + (i % perByte)))) & mask;
}

const CHANNELS = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

function greyLevel(value, depth) {
  if (depth === 16) return Math.min(255, roundHalfEven(value / 257.0)); // to_rgb: rint(v / 257)
  if (depth === 8) return value;
  return depth === 1 ? value * 255 : depth === 2 ? value * 85 : value * 17; // PIL's L;1/L;2/L;4 unpackers
}

function roundHalfEven(x) {
  const f = Math.floor(x), d = x - f;
  return d < 0.5 ? f : d > 0.5 ? f + 1 : f % 2 === 0 ? f : f + 1;
}

export async function decodePNG(bytes) {
  const chunks = readChunks(bytes);
  const h = new DataView(chunks.IHDR.buffer, chunks.IHDR.byteOffset, 13);
  const width = h.getUint32(0), height = h.getUint32(4), depth = chunks.IHDR[8], type = chunks.IHDR[9];
  if (chunks.IHDR[12] !== 0) throw new Error("interlaced PNG");
  const channels = CHANNELS[type];
  if (!channels) throw new Error(`PNG colour type ${type} is not supported`);
  const stride = Math.ceil((width * channels * depth) / 8);
  const rows = unfilter(await inflate(chunks.IDAT), height, stride, Math.max(1, (channels * depth) >> 3));
  const sample = sampler(rows, stride, depth);
  const high = depth === 16 ? (v) => v >> 8 : (v) => v;
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      if (type === 2 || type === 6) {
        for (let c = 0; c < 3; c++) data[o + c] = high(sample(y, x * channels + c));
      } else if (type === 3) {
        const index = sample(y, x);
        for (let c = 0; c < 3; c++) data[o + c] = chunks.PLTE ? (chunks.PLTE[index * 3 + c] ?? 0) : index;
      } else {
        const v = type === 0 ? greyLevel(sample(y, x), depth) : high(sample(y, x * 2));
        data[o] = data[o + 1] = data[o + 2] = v;
      }
    }
  }
  return orient({ width, height, data }, chunks.eXIf ? exifOrientation(chunks.eXIf) : 1);
}

// The Orientation tag (0x0112) of a TIFF-structured EXIF block; 1 when absent.
export function exifOrientation(exif) {
  let start = 0;
  if (exif[0] === 0x45 && exif[1] === 0x78) start = 6; // "Exif\0\0" prefix
  const view = new DataView(exif.buffer, exif.byteOffset + start, exif.byteLength - start);
  if (view.byteLength < 8) return 1;
  const little = view.getUint16(0) === 0x4949;
  const ifd = view.getUint32(4, little);
  if (ifd + 2 > view.byteLength) return 1;
  const count = view.getUint16(ifd, little);
  for (let i = 0; i < count; i++) {
    const entry = ifd + 2 + i * 12;
    if (entry + 12 > view.byteLength) break;
    if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
  }
  return 1;
}

// Apply an EXIF orientation (2..8) to RGB pixels, as PIL's ImageOps.exif_transpose does.
export function orient(image, orientation) {
  if (!(orientation >= 2 && orientation <= 8)) return image;
  const { width: w, height: h, data } = image;
  const swap = orientation >= 5;
  const W = swap ? h : w, H = swap ? w : h;
  const out = new Uint8Array(data.length);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let sx, sy;
      switch (orientation) {
        case 2: [sx, sy] = [w - 1 - x, y]; break;
        case 3: [sx, sy] = [w - 1 - x, h - 1 - y]; break;
        case 4: [sx, sy] = [x, h - 1 - y]; break;
        case 5: [sx, sy] = [y, x]; break;
        case 6: [sx, sy] = [y, h - 1 - x]; break;
        case 7: [sx, sy] = [w - 1 - y, h - 1 - x]; break;
        default: [sx, sy] = [w - 1 - y, x]; break;
      }
      out.set(data.subarray((sy * w + sx) * 3, (sy * w + sx) * 3 + 3), (y * W + x) * 3);
    }
  }
  return { width: W, height: H, data: out };
}

async function decodeWithBrowser(blob) {
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image",
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const data = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    data[j] = rgba[i];
    data[j + 1] = rgba[i + 1];
    data[j + 2] = rgba[i + 2];
  }
  return { width: bitmap.width, height: bitmap.height, data };
}

// Blob or bytes -> {width, height, data: RGB Uint8Array}; PNG exactly as PIL, the rest through the browser.
export async function decodeImage(input) {
  const blob = input instanceof Blob ? input : new Blob([input]);
  const head = new Uint8Array(await blob.slice(0, 8).arrayBuffer());
  if (isPNG(head)) {
    try {
      return await decodePNG(new Uint8Array(await blob.arrayBuffer()));
    } catch (error) {
      if (!String(error.message).includes("interlaced")) throw error;
    }
  }
  return decodeWithBrowser(blob);
}
