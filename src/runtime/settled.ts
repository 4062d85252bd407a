// Waiting for concurrent steps of a start: every step is waited for before a
// failure is passed on, so that nothing still runs (a mount, an RPC) when the
// caller's cleanup begins.

/** The steps' values in list order; after all settled, the first failure in list order is thrown. */
export async function allSettledThenThrow<T>(steps: ReadonlyArray<Promise<T>>): Promise<T[]> {
  const settled = await Promise.allSettled(steps);
  for (const r of settled) if (r.status === "rejected") throw r.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}
