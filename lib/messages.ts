// Helpers that keep error messages to one readable line: a multi-line library message folded
// into one, and a long list of faults cut to its first few plus a count of the rest.

/**
 * Collapse a multi-line message into one line, its lines joined by "; ".
 *
 * @example
 * ```ts
 * oneLine("bad header\n  at byte 8\n"); // "bad header; at byte 8"
 * ```
 */
export function oneLine(message: string): string {
  return message.split("\n").map((s) => s.trim()).filter((s) => s).join("; ");
}

/**
 * The first `n` items joined by `sep`, then "… and K more" for the K left out, so that a
 * truncated checkpoint with hundreds of faulty tensors still gives a short line.
 *
 * @param n items shown; the rest are counted. @default 5
 * @param sep @default ", "
 * @example
 * ```ts
 * shortList(["a", "b", "c", "d"], 2); // "a, b, … and 2 more"
 * ```
 */
export function shortList(items: readonly string[], n = 5, sep = ", "): string {
  if (items.length <= n) return items.join(sep);
  return [...items.slice(0, n), `… and ${items.length - n} more`].join(sep);
}
