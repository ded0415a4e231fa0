// Image preprocessing with the exact arithmetic of dcclip.runtime.preprocess (Pillow's resampling, torchvision's
// centre crop, float32 normalisation), so the browser feeds the image tower the very tensor Python feeds it.
//
// The resize follows how Pillow resamples 8-bit images: two separable passes (horizontal over the rows the vertical
// pass needs, then vertical), filter support widened by the downscale factor, coefficients normalised then turned
// into 22-bit fixed point, and every intermediate pixel rounded and clipped to 8 bits. Written from the description
// of the algorithm, checked pixel for pixel against PIL by tests/browser/test_web_target.py.

const PRECISION_BITS = 22; // 32 bits - 8 bits of pixel - 2 bits of headroom for negative lobes
const ONE = 2 ** PRECISION_BITS;
const HALF = 2 ** (PRECISION_BITS - 1);

function bicubic(x) {
  // Keys' cubic convolution with a = -0.5 (Pillow's BICUBIC).
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1.0) return ((a + 2.0) * t - (a + 3.0)) * t * t + 1;
  if (t < 2.0) return (((t - 5) * t + 8) * t - 4) * a;
  return 0.0;
}

function triangle(x) {
  const t = Math.abs(x);
  return t < 1.0 ? 1.0 - t : 0.0;
}

export const FILTERS = { bicubic: { fn: bicubic, support: 2.0 }, bilinear: { fn: triangle, support: 1.0 } };

// Per output index: the first input index, the tap count and fixed-point weights (zero-padded to ksize).
export function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = filter.support * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const starts = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const weights = new Float64Array(outSize * ksize);
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    let total = 0.0;
    const row = new Float64Array(count);
    const inverse = 1.0 / filterScale;
    for (let k = 0; k < count; k++) {
      row[k] = filter.fn((k + first - center + 0.5) * inverse);
      total += row[k];
    }
    for (let k = 0; k < count; k++) {
      const w = total !== 0.0 ? row[k] / total : row[k];
      weights[i * ksize + k] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
    }
    starts[i] = first;
    counts[i] = count;
  }
  return { starts, counts, weights, ksize };
}

function clip8(sum) {
  const v = Math.floor(sum / ONE);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One pass over interleaved RGB: resample along x (rows rowFirst..rowFirst+rows-1 of src) into a new buffer.
function horizontal(src, width, rowFirst, rows, outWidth, c) {
  const out = new Uint8Array(outWidth * rows * 3);
  for (let y = 0; y < rows; y++) {
    const base = (y + rowFirst) * width * 3;
    for (let x = 0; x < outWidth; x++) {
      const first = c.starts[x], count = c.counts[x], k0 = x * c.ksize;
      let r = HALF, g = HALF, b = HALF;
      for (let k = 0; k < count; k++) {
        const w = c.weights[k0 + k], p = base + (first + k) * 3;
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const o = (y * outWidth + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

function vertical(src, width, outHeight, c, shift) {
  const out = new Uint8Array(width * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    const first = c.starts[y] - shift, count = c.counts[y], k0 = y * c.ksize;
    for (let x = 0; x < width; x++) {
      let r = HALF, g = HALF, b = HALF;
      for (let k = 0; k < count; k++) {
        const w = c.weights[k0 + k], p = ((first + k) * width + x) * 3;
        r += src[p] * w;
        g += src[p + 1] * w;
        b += src[p + 2] * w;
      }
      const o = (y * width + x) * 3;
      out[o] = clip8(r);
      out[o + 1] = clip8(g);
      out[o + 2] = clip8(b);
    }
  }
  return out;
}

// Which pass Pillow runs first when both sides change. Pillow 13 runs the vertical pass first when the height shrinks
// by more than twice what the width shrinks (read from its compiled resampler and confirmed on 546 random size pairs);
// earlier Pillow always ran the horizontal pass first. The build records which rule the bundle's Python runtime uses.
export function verticalFirst(width, height, outWidth, outHeight, order = "pillow13") {
  if (order !== "pillow13") return false;
  const dy = height - outHeight;
  return dy > 0 && dy > 2 * (width - outWidth);
}

// Resize an RGB image {width, height, data: Uint8Array(w*h*3)} the way PIL's Image.resize does for mode RGB.
export function resizeRGB(image, outWidth, outHeight, interpolation = "bicubic", order = "pillow13") {
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`interpolation must be one of ${Object.keys(FILTERS)}, got ${interpolation}`);
  const { width, height } = image;
  if (width === outWidth && height === outHeight) return { width, height, data: image.data.slice() };
  const ch = coefficients(width, outWidth, filter);
  const cv = coefficients(height, outHeight, filter);
  if (outWidth !== width && outHeight !== height && verticalFirst(width, height, outWidth, outHeight, order)) {
    const tall = vertical(image.data, width, outHeight, cv, 0);
    return { width: outWidth, height: outHeight, data: horizontal(tall, width, 0, outHeight, outWidth, ch) };
  }
  let data = image.data, rowFirst = 0, rows = height;
  if (outWidth !== width) {
    // Only the rows the vertical pass reads are resampled horizontally (as Pillow does).
    rowFirst = cv.starts[0];
    rows = cv.starts[outHeight - 1] + cv.counts[outHeight - 1] - rowFirst;
    data = horizontal(data, width, rowFirst, rows, outWidth, ch);
  }
  if (outHeight !== height) data = vertical(data, outWidth, outHeight, cv, rowFirst);
  return { width: outWidth, height: outHeight, data };
}

// Python's round() on a multiple of 0.5: halves go to the even neighbour.
function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d < 0.5) return f;
  if (d > 0.5) return f + 1;
  return f % 2 === 0 ? f : f + 1;
}

// Centre crop with torchvision's rounding; pads with black when the image is smaller than size.
export function centerCrop(image, size) {
  let { width, height, data } = image;
  if (width < size || height < size) {
    const w = Math.max(width, size), h = Math.max(height, size);
    const canvas = new Uint8Array(w * h * 3);
    const left = Math.floor((w - width) / 2), top = Math.floor((h - height) / 2);
    for (let y = 0; y < height; y++) canvas.set(data.subarray(y * width * 3, (y + 1) * width * 3), ((y + top) * w + left) * 3);
    ({ width, height, data } = { width: w, height: h, data: canvas });
  }
  const top = roundHalfEven((height - size) / 2.0);
  const left = roundHalfEven((width - size) / 2.0);
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    const from = ((y + top) * width + left) * 3;
    out.set(data.subarray(from, from + size * 3), y * size * 3);
  }
  return { width: size, height: size, data: out };
}

const MAX_ASPECT_RATIO = 50.0; // dcclip.runtime.preprocess.MAX_ASPECT_RATIO

// The runtime's check_geometry: refuse images with no area or more than 50 times longer than wide.
export function checkGeometry(width, height) {
  if (width < 1 || height < 1) throw new Error(`image of ${width}x${height} pixels has no area`);
  if (Math.max(width, height) / Math.min(width, height) > MAX_ASPECT_RATIO) {
    throw new Error(`image of ${width}x${height} pixels is more than ${MAX_ASPECT_RATIO} times longer than wide`);
  }
}

// The geometric part of Preprocess: shortest side to image_size (or squash), then centre crop.
export function resizeAndCrop(image, pre) {
  const size = pre.image_size;
  checkGeometry(image.width, image.height);
  const interpolation = pre.interpolation || "bicubic";
  const order = pre.resample_order || "pillow13";
  if ((pre.resize_mode || "shortest") === "squash") return resizeRGB(image, size, size, interpolation, order);
  const { width, height } = image;
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.trunc((size * long) / short);
  const [w, h] = width <= height ? [size, newLong] : [newLong, size];
  const resized = w === width && h === height ? image : resizeRGB(image, w, h, interpolation, order);
  return centerCrop(resized, size);
}

// uint8 HWC -> float32 CHW, (x / 255 - mean) / std with float32 rounding at every step, as numpy does it.
export function normalize(image, pre) {
  const f = Math.fround;
  const { width, height, data } = image;
  const plane = width * height;
  const out = new Float32Array(3 * plane);
  const mean = pre.mean.map(f), std = pre.std.map(f), s255 = f(255.0);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) out[c * plane + i] = f(f(f(data[i * 3 + c] / s255) - mean[c]) / std[c]);
  }
  return out;
}

// RGB pixels -> the image tower's input [3, S, S] for one image.
export function preprocess(image, pre) {
  return normalize(resizeAndCrop(image, pre), pre);
}
