// Reconnect delays: exponential ceilings, full jitter inside them, the cap.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from '../src/index.js';

test('ceilings double from 250 ms up to the 30 s cap', () => {
  assert.deepStrictEqual(DEFAULT_BACKOFF, { initialDelayMs: 250, maxDelayMs: 30_000 });
  assert.deepStrictEqual(
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 50, 5000].map((n) => backoffCeiling(n)),
    [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000],
  );
  assert.equal(backoffCeiling(3, { initialDelayMs: 100, maxDelayMs: 350 }), 350);
});

test('full jitter: every delay in [0, ceiling], spread over the whole range', () => {
  assert.equal(backoffDelay(4, DEFAULT_BACKOFF, () => 0), 0);
  assert.equal(backoffDelay(4, DEFAULT_BACKOFF, () => 0.999999999), 2000);
  assert.equal(backoffDelay(100, DEFAULT_BACKOFF, () => 0.999999999), 30_000);
  for (const attempt of [1, 2, 5, 9, 30]) {
    const ceiling = backoffCeiling(attempt);
    const delays = Array.from({ length: 2000 }, () => backoffDelay(attempt));
    assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d <= ceiling), `attempt ${attempt} within [0, ${ceiling}]`);
    const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
    assert.ok(Math.abs(mean - ceiling / 2) < ceiling * 0.06, `attempt ${attempt}: mean ${mean} near ${ceiling / 2}`);
    assert.ok(Math.min(...delays) < ceiling * 0.05 && Math.max(...delays) > ceiling * 0.95, 'not equal jitter: the low end is used');
  }
});
