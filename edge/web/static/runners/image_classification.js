// image_classification bundles (edge/runners/image_classification.py): a PNG or JPEG
// picked in the page -> label, top probabilities, latency. The image is decoded by the
// browser (upright by its EXIF orientation), converted to grey (Pillow's "L":
// (19595 R + 38470 G + 7471 B + 2^15) >> 16) or RGB (alpha dropped), and resized to
// (W, H) with Pillow's bilinear filter (resampleBilinear) only when its size differs:
// the pixels the Python app gives the model.

import {BundleError} from '../lib/bundle.js';
import {barChart, el, guarded, ms} from '../lib/ui.js';
import {ClassifierRunner} from './classification.js';

const PRECISION_BITS = 32 - 8 - 2;   // Pillow's Resample.c, 8 bits per channel

// Pillow's precompute_coeffs with the bilinear (triangle) filter, support 1.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = filterScale;
  const ss = 1.0 / filterScale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k.push(w);
      ww += w;
    }
    const kk = k.map((w) => {
      const v = ww !== 0 ? w / ww : w;
      return Math.trunc(v * (1 << PRECISION_BITS) + (v < 0 ? -0.5 : 0.5));
    });
    out.push({xmin, kk});
  }
  return out;
}

const clip8 = (ss) => (ss >= 255 * 2 ** PRECISION_BITS ? 255
  : ss <= 0 ? 0 : Math.floor(ss / 2 ** PRECISION_BITS));

// One pass of Pillow's 8-bit resampling along x (horizontal) or y.
function resamplePass(src, width, height, channels, outSize, horizontal) {
  const coeffs = coefficients(horizontal ? width : height, outSize);
  const outW = horizontal ? outSize : width;
  const outH = horizontal ? height : outSize;
  const dst = new Uint8Array(outW * outH * channels);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const {xmin, kk} = coeffs[horizontal ? x : y];
      for (let c = 0; c < channels; c++) {
        let ss = 2 ** (PRECISION_BITS - 1);
        for (let i = 0; i < kk.length; i++) {
          const sx = horizontal ? xmin + i : x;
          const sy = horizontal ? y : xmin + i;
          ss += src[(sy * width + sx) * channels + c] * kk[i];
        }
        dst[(y * outW + x) * channels + c] = clip8(ss);
      }
    }
  }
  return dst;
}

// Pillow's Image.resize((outW, outH), BILINEAR) of 8-bit pixels (H, W, channels).
export function resampleBilinear(pixels, width, height, channels, outW, outH) {
  let data = pixels;
  let w = width;
  if (outW !== width) {
    data = resamplePass(data, w, height, channels, outW, true);
    w = outW;
  }
  if (outH !== height) data = resamplePass(data, w, height, channels, outH, false);
  return data;
}

// RGBA bytes -> 1 (Pillow "L") or 3 (RGB) channels.
export function convertRGBA(rgba, count, channels) {
  const out = new Uint8Array(count * channels);
  for (let i = 0; i < count; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (channels === 1) {
      out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    } else {
      out.set([r, g, b], 3 * i);
    }
  }
  return out;
}

export class ImageClassificationRunner extends ClassifierRunner {
  static async create(manifest, files, model) {
    const runner = new ImageClassificationRunner(manifest, files, model);
    runner.height = manifest.getInt('image_height', undefined, 1);
    runner.width = manifest.getInt('image_width', undefined, 1);
    runner.channels = manifest.getInt('channels', undefined, 1);
    if (![1, 3].includes(runner.channels)) {
      throw new BundleError('manifest.json: channels must be 1 (grey) or 3 (RGB), got ' +
                            runner.channels);
    }
    const dtype = runner.input.dtype;
    if (!(dtype === 'float32' || dtype === 'uint8')) {
      throw new BundleError(`Unsupported model: ${manifest.model} takes ${dtype} pixels; ` +
                            'this page feeds float32 or uint8 ones');
    }
    runner.checkInputShape([1, runner.height, runner.width, runner.channels],
                           '(batch, height, width, channels)',
                           ['image_height', 'image_width', 'channels']);
    await runner.checkClasses(new Float32Array(runner.height * runner.width * runner.channels));
    return runner;
  }

  // The model's pixels (H * W * C values 0..255) of RGBA bytes of any size.
  pixelsOfRGBA(rgba, width, height) {
    const converted = convertRGBA(rgba, width * height, this.channels);
    return resampleBilinear(converted, width, height, this.channels, this.width, this.height);
  }

  async decode(blob) {
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob, {imageOrientation: 'from-image',
        premultiplyAlpha: 'none', colorSpaceConversion: 'none'});
    } catch {
      throw new Error(`${blob.name ?? 'the file'} is not a PNG or JPEG image this ` +
                      'browser can decode');
    }
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext('2d', {willReadFrequently: true});
    context.drawImage(bitmap, 0, 0);
    const {data} = context.getImageData(0, 0, bitmap.width, bitmap.height);
    const pixels = this.pixelsOfRGBA(data, bitmap.width, bitmap.height);
    bitmap.close();
    return pixels;
  }

  // {label, probability, topK, probabilities, decodingMs, inferenceMs, latencyMs}
  async classifyBlob(blob, topK = 5) {
    const t0 = performance.now();
    const pixels = await this.decode(blob);
    const t1 = performance.now();
    const probabilities = await this.predict(pixels);
    const t2 = performance.now();
    return {...this.ranked(probabilities, topK), pixels,
            probabilities: Array.from(probabilities),
            decodingMs: t1 - t0, inferenceMs: t2 - t1, latencyMs: t2 - t0};
  }

  // For tests: probabilities of pixel rows given as arrays of H * W * C values.
  async probabilitiesBatch(rows) {
    const out = [];
    for (const row of rows) out.push(Array.from(await this.predict(row)));
    return out;
  }

  preview(pixels) {
    const canvas = el('canvas', {class: 'preview', width: String(this.width),
                                 height: String(this.height)});
    const rgba = new ImageData(this.width, this.height);
    for (let i = 0; i < this.width * this.height; i++) {
      const c = this.channels === 1 ? [pixels[i], pixels[i], pixels[i]]
        : Array.from(pixels.slice(3 * i, 3 * i + 3));
      rgba.data.set([...c, 255], 4 * i);
    }
    canvas.getContext('2d').putImageData(rgba, 0, 0);
    return canvas;
  }

  render(root) {
    const picker = el('input', {type: 'file', id: 'image', accept: 'image/png,image/jpeg'});
    const result = el('div', {class: 'result', id: 'result'});
    const errorLine = el('div', {class: 'task-error', id: 'task-error', role: 'alert'});
    picker.addEventListener('change', guarded(async () => {
      const file = picker.files[0];
      if (!file) return;
      result.replaceChildren();
      const r = await this.classifyBlob(file, 5);
      this.last = r;
      result.replaceChildren(
        this.preview(r.pixels),
        el('div', {}, 'Label: ', el('span', {class: 'label', id: 'label', text: r.label}),
           el('span', {class: 'muted', text: `  p = ${r.probability?.toFixed(4)}`})),
        barChart(r.topK.map(([label, p]) => [label, p ?? 0])),
        el('div', {class: 'latency', id: 'latency',
                   text: `decoding ${ms(r.decodingMs)} · inference ${ms(r.inferenceMs)} · ` +
                         `total ${ms(r.latencyMs)} (${this.width}x${this.height}x` +
                         `${this.channels})`}));
      root.dataset.runs = String(Number(root.dataset.runs ?? 0) + 1);
    }, errorLine));
    root.append(el('h2', {text: 'Image classification'}),
                el('label', {}, 'Pick a PNG or JPEG image: ', picker), errorLine, result);
  }
}
