import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/errors.ts';
import { isLoopbackRegistry, parseImageReference } from '../../src/oci/reference.ts';

const DIGEST = `sha256:${'ab'.repeat(32)}`;

describe('parseImageReference', () => {
  it.each([
    ['golang:1.22', 'docker.io', 'registry-1.docker.io', 'library/golang', '1.22', undefined, 'docker.io/library/golang:1.22'],
    ['golang', 'docker.io', 'registry-1.docker.io', 'library/golang', 'latest', undefined, 'docker.io/library/golang:latest'],
    ['library/node:22-slim', 'docker.io', 'registry-1.docker.io', 'library/node', '22-slim', undefined, 'docker.io/library/node:22-slim'],
    ['docker.io/python:3.12', 'docker.io', 'registry-1.docker.io', 'library/python', '3.12', undefined, 'docker.io/library/python:3.12'],
    ['index.docker.io/bitnami/redis', 'docker.io', 'registry-1.docker.io', 'bitnami/redis', 'latest', undefined, 'docker.io/bitnami/redis:latest'],
    ['someone/app:v1', 'docker.io', 'registry-1.docker.io', 'someone/app', 'v1', undefined, 'docker.io/someone/app:v1'],
    ['ghcr.io/a/b/c:tag', 'ghcr.io', 'ghcr.io', 'a/b/c', 'tag', undefined, 'ghcr.io/a/b/c:tag'],
    ['localhost/x', 'localhost', 'localhost', 'x', 'latest', undefined, 'localhost/x:latest'],
    ['localhost:5000/x', 'localhost:5000', 'localhost:5000', 'x', 'latest', undefined, 'localhost:5000/x:latest'],
    [`127.0.0.1:5000/x@${DIGEST}`, '127.0.0.1:5000', '127.0.0.1:5000', 'x', undefined, DIGEST, `127.0.0.1:5000/x@${DIGEST}`],
    [`golang:1.22@${DIGEST}`, 'docker.io', 'registry-1.docker.io', 'library/golang', '1.22', DIGEST, `docker.io/library/golang:1.22@${DIGEST}`],
    ['[::1]:5000/ns/img:1.0', '[::1]:5000', '[::1]:5000', 'ns/img', '1.0', undefined, '[::1]:5000/ns/img:1.0'],
    ['Registry/app', 'Registry', 'Registry', 'app', 'latest', undefined, 'Registry/app:latest'],
    ['quay.io/org/my_app.v2-x__y:A_1.0-rc', 'quay.io', 'quay.io', 'org/my_app.v2-x__y', 'A_1.0-rc', undefined, 'quay.io/org/my_app.v2-x__y:A_1.0-rc'],
  ])('%s', (text, registry, host, repository, tag, digest, canonical) => {
    const reference = parseImageReference(text);
    expect({ ...reference, toString: undefined }).toEqual({ registry, host, repository, tag, digest, toString: undefined });
    expect(reference.toString()).toBe(canonical);
    expect(`${reference}`).toBe(canonical);
  });

  it('gives canonical names that parse to themselves', () => {
    const canonical = parseImageReference(`golang:1.22@${DIGEST}`).toString();
    expect(parseImageReference(canonical).toString()).toBe(canonical);
  });

  it.each([
    ['', 'it names no repository'],
    [':1.0', 'it names no repository'],
    ['Golang:1.22', 'repository component "Golang" must be lowercase'],
    ['ghcr.io/Org/app', 'repository component "Org" must be lowercase'],
    ['ghcr.io/a//b', 'repository component "" must be lowercase letters and digits'],
    ['ghcr.io/a-/b', 'repository component "a-" must be lowercase letters and digits'],
    ['golang:-bad', 'tag "-bad" must be 1-128 letters'],
    [`golang:${'t'.repeat(129)}`, `tag "${'t'.repeat(129)}" must be 1-128`],
    ['golang@sha256:abc', 'digest "sha256:abc" is not sha256:<64 lowercase hex digits>'],
    [`golang@sha512:${'a'.repeat(128)}`, `digest "sha512:${'a'.repeat(128)}" is not sha256:<64 lowercase hex digits> (rampack supports sha256 only)`],
    ['https://ghcr.io/a/b', 'drop the URL scheme'],
    ['bad_host.io:port/x', 'registry "bad_host.io:port" is not a valid HOST[:PORT]'],
    [`ghcr.io/${'a'.repeat(250)}`, 'the name is longer than 255 characters'],
  ])('rejects "%s"', (text, problem) => {
    const attempt = () => parseImageReference(text);
    expect(attempt).toThrow(InputError);
    expect(attempt).toThrow(`image reference "${text}" is invalid: ${problem}`);
  });
});

describe('isLoopbackRegistry', () => {
  it.each([
    ['localhost', true],
    ['localhost:5000', true],
    ['127.0.0.1:5000', true],
    ['127.1.2.3', true],
    ['[::1]:5000', true],
    ['registry-1.docker.io', false],
    ['127.0.0.1.example.com', false],
    ['10.0.0.1:5000', false],
    ['localhost.example.com:5000', false],
  ])('%s -> %s', (host, loopback) => {
    expect(isLoopbackRegistry(host)).toBe(loopback);
  });
});
