import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Transport } from '../../src/registry/transport.ts';

let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer((request, response) => {
    // Raw header lines, so a header can repeat and carry padding.
    response.writeHead(request.url === '/missing' ? 404 : 200, 'Fine Thanks', [
      ['WWW-Authenticate', 'Bearer realm="a"'],
      ['www-authenticate', ' Basic realm="b" '],
      ['Docker-Content-Digest', 'sha256:abc'],
    ].flat());
    response.end(request.method === 'HEAD' ? undefined : 'body text');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('registry transport responses', () => {
  it('reads status, headers and body as fetch would: names in any case, repeats joined, padding stripped', async () => {
    const transport = new Transport();
    try {
      const response = await transport.send(new URL(`${base}/blob`));
      expect([response.status, response.statusText, response.ok]).toEqual([200, 'Fine Thanks', true]);
      expect(response.headers.get('www-authenticate')).toBe('Bearer realm="a", Basic realm="b"');
      expect(response.headers.get('DOCKER-CONTENT-DIGEST')).toBe('sha256:abc');
      expect(response.headers.get('location')).toBeNull();
      expect(await response.text()).toBe('body text');
      const missing = await transport.send(new URL(`${base}/missing`), { method: 'HEAD' });
      expect([missing.status, missing.ok, missing.body]).toEqual([404, false, null]);
      expect(await missing.text()).toBe('');
    } finally {
      transport.close();
    }
  });

  it('loads no fetch implementation (undici): that alone would cost every run ~20 ms of CPU', async () => {
    const transportModule = fileURLToPath(new URL('../../src/registry/transport.ts', import.meta.url));
    const script = `
      const { Transport } = await import(${JSON.stringify(transportModule)});
      const transport = new Transport();
      const response = await transport.send(new URL(${JSON.stringify(`${base}/blob`)}));
      await response.text();
      transport.close();
      process.stdout.write(process.moduleLoadList.filter((name) => name.includes('undici')).join(','));
    `;
    // Not execFileSync: the server answering the child runs in this process.
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(stdout).toBe('');
  });
});
