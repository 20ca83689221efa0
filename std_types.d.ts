// Types for the `@std/*` modules this project imports. On machines that reach JSR, the import
// deno-lint-ignore-file no-explicit-any
// map can point at `jsr:@std/...` (which ships types) and this file is redundant; here `@std` is
// mapped onto the npm republish `deno-std`, which ships JavaScript only.

declare module "@std/bytes/concat" {
  /** Concatenates byte arrays into a new one. */
  export function concat(buffers: readonly Uint8Array[]): Uint8Array;
}

declare module "@std/streams/text-line-stream" {
  /** Options for {@linkcode TextLineStream}. */
  export interface TextLineStreamOptions {
    /** Allow splitting by `\r`. @default {false} */
    allowCR?: boolean;
  }
  /** Splits a stream of text into lines (`\n` or `\r\n`). */
  export class TextLineStream extends TransformStream<string, string> {
    constructor(options?: TextLineStreamOptions);
  }
}

declare module "@std/cli/parse-args" {
  export interface ParseOptions {
    string?: string[];
    boolean?: string[];
    collect?: string[];
    negatable?: string[];
    alias?: Record<string, string | string[]>;
    default?: Record<string, unknown>;
    stopEarly?: boolean;
    "--"?: boolean;
    unknown?: (arg: string, key?: string, value?: unknown) => unknown;
  }
  export interface Args {
    _: Array<string | number>;
    "--"?: string[];
    [key: string]: any;
  }
  export function parseArgs(args: string[], options?: ParseOptions): Args;
}

declare module "@std/crypto/timing-safe-equal" {
  export function timingSafeEqual(
    a: ArrayBufferView | ArrayBufferLike | DataView,
    b: ArrayBufferView | ArrayBufferLike | DataView,
  ): boolean;
}

declare module "@std/assert" {
  export class AssertionError extends Error {
    constructor(message: string, options?: ErrorOptions);
  }
  export function assert(expr: unknown, msg?: string): asserts expr;
  export function assertEquals<T>(actual: T, expected: T, msg?: string): void;
  export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void;
  export function assertStrictEquals<T>(
    actual: unknown,
    expected: T,
    msg?: string,
  ): asserts actual is T;
  export function assertExists<T>(actual: T, msg?: string): asserts actual is NonNullable<T>;
  export function assertFalse(expr: unknown, msg?: string): void;
  export function assertGreater<T>(actual: T, expected: T, msg?: string): void;
  export function assertGreaterOrEqual<T>(actual: T, expected: T, msg?: string): void;
  export function assertLess<T>(actual: T, expected: T, msg?: string): void;
  export function assertLessOrEqual<T>(actual: T, expected: T, msg?: string): void;
  export function assertInstanceOf<T extends abstract new (...args: any[]) => any>(
    actual: unknown,
    expectedType: T,
    msg?: string,
  ): asserts actual is InstanceType<T>;
  export function assertMatch(actual: string, expected: RegExp, msg?: string): void;
  export function assertNotMatch(actual: string, expected: RegExp, msg?: string): void;
  export function assertStringIncludes(actual: string, expected: string, msg?: string): void;
  export function assertArrayIncludes<T>(
    actual: ArrayLike<T>,
    expected: ArrayLike<T>,
    msg?: string,
  ): void;
  export function assertObjectMatch(
    actual: Record<PropertyKey, any>,
    expected: Record<PropertyKey, unknown>,
    msg?: string,
  ): void;
  export function assertThrows(fn: () => unknown, msg?: string): unknown;
  export function assertThrows<E extends Error = Error>(
    fn: () => unknown,
    ErrorClass: abstract new (...args: any[]) => E,
    msgIncludes?: string,
    msg?: string,
  ): E;
  export function assertRejects(fn: () => PromiseLike<unknown>, msg?: string): Promise<unknown>;
  export function assertRejects<E extends Error = Error>(
    fn: () => PromiseLike<unknown>,
    ErrorClass: abstract new (...args: any[]) => E,
    msgIncludes?: string,
    msg?: string,
  ): Promise<E>;
  export function fail(msg?: string): never;
  export function unreachable(msg?: string): never;
}
