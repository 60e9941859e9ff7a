// Automatic choice of (t, block, pool) by successive halving (Jamieson & Talwalkar 2016; the
// budget scheme of Hyperband's brackets): train a linear probe on every cell with a small share
// of the training images and a few epochs, keep the best 1/η on the validation split, give the
// survivors η times the images, and repeat until one cell is left or the images run out. Both
// the training and the validation images grow each round, as prefixes of fixed orders, so the
// features of earlier rounds are reused and a forward pass is paid once per (image, t).
//
// The rounds are planned here and the work is done by a caller-supplied `evaluate`, so the
// schedule is testable without a network and its cost is counted the same way for any backend.
import { type Cell, cellName } from "./features.ts";

/** How the halving proceeds. */
export interface HalvingOptions {
  /** Keep the best 1/eta each round. @default 3 */
  readonly eta?: number;
  /** Training images of the last round (the whole fit part). */
  readonly trainImages: number;
  /** Validation images of the last round. */
  readonly valImages: number;
  /** Epochs per round (the same every round: more images make the longer training). @default 4 */
  readonly epochs?: number;
  /** Fewest training images in round 0. @default 256 */
  readonly minImages?: number;
}

/** One round of the plan. */
export interface Round {
  readonly cells: readonly Cell[];
  readonly trainImages: number;
  readonly valImages: number;
  readonly epochs: number;
}

/** What one round measured: validation accuracy per cell name. */
export type RoundScores = ReadonlyMap<string, number>;

/** The work done: distinct (image, t) network passes, and head·image·epochs of training. */
export interface SelectionCost {
  readonly forwardPasses: number;
  readonly headImageEpochs: number;
}

/** The outcome of a halving. */
export interface Selection {
  readonly best: Cell;
  readonly rounds: readonly (Round & { readonly scores: Readonly<Record<string, number>> })[];
  readonly cost: SelectionCost;
}

/** The cost of the full grid: every cell trained on all images for `epochs`. */
export function gridCost(
  cells: readonly Cell[],
  trainImages: number,
  valImages: number,
  epochs: number,
): SelectionCost {
  const ts = new Set(cells.map((c) => c.t)).size;
  return {
    forwardPasses: ts * (trainImages + valImages),
    headImageEpochs: cells.length * trainImages * epochs,
  };
}

/**
 * Successive halving over `cells`; `evaluate(round)` trains linear probes for the round's cells
 * on the first `trainImages` fit images and returns their accuracy on the first `valImages`
 * validation images. Ties keep the earlier cell in grid order.
 * @throws Error for an empty grid or bad options
 */
export async function successiveHalving(
  cells: readonly Cell[],
  evaluate: (r: Round) => Promise<RoundScores>,
  o: HalvingOptions,
): Promise<Selection> {
  const eta = o.eta ?? 3, epochs = o.epochs ?? 4, minImages = o.minImages ?? 256;
  if (cells.length === 0) throw new Error("successiveHalving: no cells");
  if (!(eta >= 2 && Number.isInteger(eta))) {
    throw new Error(`successiveHalving: eta ${eta} must be an integer >= 2`);
  }
  if (!(o.trainImages > 0 && o.valImages > 0)) throw new Error("successiveHalving: no images");
  // Rounds: one per halving that leaves more than one cell, the last on all the images.
  let rounds = 1;
  for (let n = cells.length; Math.floor(n / eta) > 1; n = Math.floor(n / eta)) rounds++;
  const share = (r: number) => eta ** (r - (rounds - 1)); // 1 in the last round
  const imagesAt = (r: number, all: number) =>
    Math.min(all, Math.max(Math.min(minImages, all), Math.round(all * share(r))));
  let alive = [...cells];
  const done: (Round & { scores: Record<string, number> })[] = [];
  const seen = new Map<number, number>(); // t → images already passed (train + val)
  let forwardPasses = 0, headImageEpochs = 0;
  for (let r = 0; r < rounds; r++) {
    const round: Round = {
      cells: alive,
      trainImages: imagesAt(r, o.trainImages),
      valImages: imagesAt(r, o.valImages),
      epochs,
    };
    for (const t of new Set(alive.map((c) => c.t))) {
      const need = round.trainImages + round.valImages;
      forwardPasses += Math.max(0, need - (seen.get(t) ?? 0));
      seen.set(t, Math.max(need, seen.get(t) ?? 0));
    }
    headImageEpochs += alive.length * round.trainImages * epochs;
    const scores = await evaluate(round);
    const ranked = alive
      .map((c, i) => ({ c, i, s: scores.get(cellName(c)) ?? -Infinity }))
      .sort((x, y) => y.s - x.s || x.i - y.i);
    done.push({ ...round, scores: Object.fromEntries(ranked.map((x) => [cellName(x.c), x.s])) });
    alive = ranked.slice(0, Math.max(1, Math.floor(alive.length / eta))).map((x) => x.c);
  }
  return { best: alive[0], rounds: done, cost: { forwardPasses, headImageEpochs } };
}
