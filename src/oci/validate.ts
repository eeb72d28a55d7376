/**
 * Shape checks for the JSON documents of an image. Registries and layouts are
 * untrusted input: a document of the wrong shape must become an InputError
 * naming it, never a TypeError deep inside the build.
 */
import { InputError } from '../errors.ts';
import type { Descriptor } from './types.ts';

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Parses a JSON document that must be an object. */
export function parseJsonObject<T>(bytes: Buffer | string, what: string): T {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString());
  } catch (error) {
    throw new InputError(`${what} is not valid JSON: ${(error as Error).message}`);
  }
  if (!isRecord(value)) throw new InputError(`${what} is not a JSON object`);
  return value as T;
}

export function checkDescriptor(value: unknown, what: string): asserts value is Descriptor {
  if (
    !isRecord(value) ||
    typeof value.digest !== 'string' ||
    typeof value.mediaType !== 'string' ||
    !Number.isSafeInteger(value.size) ||
    (value.size as number) < 0
  ) {
    throw new InputError(`${what} is not a descriptor (mediaType, digest and size)`);
  }
}

/** Checks a list of descriptors, e.g. "layers" of a manifest or "manifests" of an index. */
export function checkDescriptors(value: unknown, what: string): asserts value is Descriptor[] {
  if (!Array.isArray(value)) throw new InputError(`${what} is not an array`);
  value.forEach((item, index) => checkDescriptor(item, `${what}[${index}]`));
}
