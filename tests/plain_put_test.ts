/**
 * The plain-put scan (protocol.ts `decodePlainPut`) gives exactly what the JSON codec decodes,
 * or leaves the line to it: fixed edge cases, then random lines near the plain shape.
 */
import { assertEquals } from "@std/assert";
import { decodePlainPut } from "../protocol.ts";
import { JsonCodec } from "../codec.ts";
import { prng } from "./_prng.ts";

const codec = new JsonCodec();

/** What the full decode gives for a line, or "error". */
function full(line: string): unknown {
  try {
    return codec.decode(line);
  } catch {
    return "error";
  }
}

/** The scan either declines or agrees with the full decode. */
function check(line: string): boolean {
  const plain = decodePlainPut(line);
  if (plain === undefined) return false;
  assertEquals(plain, full(line), line);
  return true;
}

Deno.test("decodePlainPut takes the plain shape and agrees with the codec", () => {
  const taken = [
    '{"action":"put","stream":"job","message":"50%"}',
    '{"action":"put","stream":"job","message":""}',
    '{"action":"put","stream":"","message":"x"}',
    '{"action":"put","stream":"jobs.é✓","message":"déjà vu 😀"}',
    '{"action":"put","stream":"a}","message":"{u}"}',
    `{"action":"put","stream":"s","message":"${"x".repeat(10_000)}"}`,
  ];
  for (const line of taken) assertEquals(check(line), true, line);
});

Deno.test("decodePlainPut leaves every other line to the full decode", () => {
  const left = [
    '{"action":"put","stream":"job","message":"a\\"b"}', // an escape
    '{"action":"put","stream":"job","message":"a\\nb"}',
    '{"action":"put","stream":"job","message":"tab\there"}', // a raw control character
    '{"action":"put","stream":"job","message":"a"b"}', // a bare quote: not JSON
    '{"action":"put","stream":"job","message":"x","id":1}', // an id
    '{"action":"put","stream":"job","message":1}', // not a string
    '{"action":"put","stream":"job","message":"x"} ', // trailing space
    '{"action":"put","stream":"job","message":"x"}}',
    '{"action":"put","stream":"job","message":"x"',
    '{"action":"put","stream":"job"}',
    '{"action":"put","stream":"job","message":"',
    '{"action":"put","stream":"job","messages":"x"}',
    '{"action":"put","stream":"jo"b","message":"x"}',
    '{"action":"put","stream":"job",,"message":"x"}',
    '{"action":"put","stream":"job","message":"x","message":"y"}',
    '{"action":"put", "stream":"job","message":"x"}',
    '{"action":"header","stream":"job","message":"x"}',
  ];
  for (const line of left) assertEquals(decodePlainPut(line), undefined, line);
});

Deno.test("decodePlainPut agrees with the codec on random lines near the plain shape", () => {
  const rand = prng(17);
  const alphabet = ['"', "\\", "}", "{", ",", ":", "a", "é", "😀", "\n", "\t", " ", "x", "1"];
  const piece = (n: number): string => {
    let s = "";
    for (let i = 0; i < n; i++) s += alphabet[Math.floor(rand() * alphabet.length)];
    return s;
  };
  let taken = 0;
  for (let i = 0; i < 20_000; i++) {
    const line = `{"action":"put","stream":"${piece(Math.floor(rand() * 4))}","message":"${
      piece(Math.floor(rand() * 4))
    }"${rand() < 0.2 ? piece(2) : ""}}`;
    if (check(line)) taken++;
  }
  // Both kinds of line were met (the seed fixes how many): 6,735 taken, the rest left.
  assertEquals(taken, 6735);
});
