// What pre-training draws at random, and in which order it sees the data. Every draw of step i
// is a pure function of (seed, i): the batch is a slice of its epoch's permutation, and t, ε and
// the network's own randomness (dropout, label dropout) come from keys folded with i. A resumed
// run therefore continues the very same loss curve as an unbroken one.
import { fold, foldName, permutation, type Rng, rng, split } from "./random.ts";

/** One key per kind of draw; none is reused for anything else. */
export interface RunKeys {
  /** Initial weights. */
  readonly init: Rng;
  /** Epoch permutations. */
  readonly data: Rng;
  /** Timesteps t. */
  readonly t: Rng;
  /** Noise ε of q_sample. */
  readonly noise: Rng;
  /** The network's training randomness (dropout masks, label dropout). */
  readonly net: Rng;
}

// Children 0–4 of the seed's key. Their order is fixed: committed runs depend on it.
export function runKeys(seed: number): RunKeys {
  const [init, data, t, noise, net] = split(rng(seed), 5);
  return { init, data, t, noise, net };
}

/** The key of the sample grids drawn with `seed`: apart from every training key. */
export const sampleKey = (seed: number): Rng => foldName(rng(seed), "sample");

/**
 * The data order: step i takes positions [i·B, (i+1)·B) of the concatenated per-epoch
 * permutations of n items. Each epoch's permutation is computed once and kept while in use.
 */
export class BatchOrder {
  private readonly cache = new Map<number, Int32Array>();

  constructor(
    private readonly key: Rng,
    private readonly n: number,
    private readonly batch: number,
  ) {
    if (!(n > 0)) throw new Error("BatchOrder: the dataset is empty");
    if (!(batch > 0)) throw new Error(`BatchOrder: batch ${batch} must be positive`);
  }

  private epoch(e: number): Int32Array {
    let perm = this.cache.get(e);
    if (!perm) {
      perm = permutation(fold(this.key, e), this.n);
      this.cache.set(e, perm);
      // A batch spans at most a few epochs: keep only those at or after the oldest in use.
      for (const k of this.cache.keys()) if (k < e - 1) this.cache.delete(k);
    }
    return perm;
  }

  /** Indices of step `step`'s batch. */
  indices(step: number): Int32Array {
    const out = new Int32Array(this.batch);
    for (let j = 0; j < this.batch; j++) {
      const pos = step * this.batch + j;
      const e = Math.floor(pos / this.n);
      out[j] = this.epoch(e)[pos - e * this.n];
    }
    return out;
  }
}
