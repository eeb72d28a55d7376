// A serverless-style function using Node's standard library broadly, for
// tracing the slim Node image (recipes/node.yaml slim.workload): files, JSON,
// an HTTP server and client on loopback, hashing and HMAC, TLS primitives
// (keys, signatures), compression, a subprocess, worker threads.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, createHmac, generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { gunzipSync, gzipSync } from 'node:zlib';

const server = createServer((request, response) => {
  let body = '';
  request.on('data', (chunk) => (body += chunk));
  request.on('end', () => {
    const { numbers } = JSON.parse(body);
    response.setHeader('content-type', 'application/json');
    response.end(JSON.stringify({ sum: numbers.reduce((a, b) => a + b, 0) }));
  });
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const reply = await fetch(`http://127.0.0.1:${server.address().port}/`, { method: 'POST', body: JSON.stringify({ numbers: [1, 2, 3] }) });
assert.equal((await reply.json()).sum, 6);
server.close();

const dir = mkdtempSync(join(tmpdir(), 'service-'));
writeFileSync(join(dir, 'data.gz'), gzipSync(JSON.stringify({ items: [1, 2, 3] })));
assert.deepEqual(JSON.parse(gunzipSync(readFileSync(join(dir, 'data.gz')))).items, [1, 2, 3]);
rmSync(dir, { recursive: true });

const key = randomBytes(32);
const digest = createHash('sha256').update(key).digest('hex');
createHmac('sha256', key).update('message').digest('hex');
const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
assert.ok(verify('sha256', Buffer.from('data'), publicKey, sign('sha256', Buffer.from('data'), privateKey)));

const child = spawnSync(process.execPath, ['-e', 'console.log(process.versions.node)'], { encoding: 'utf8' });
assert.equal(child.status, 0);
const squares = await new Promise((resolve, reject) => {
  const worker = new Worker('const { parentPort } = require("node:worker_threads"); parentPort.postMessage([1, 2, 3].map((n) => n * n));', { eval: true });
  worker.once('message', resolve);
  worker.once('error', reject);
});
assert.deepEqual(squares, [1, 4, 9]);
console.log(`service workload ok ${digest.slice(0, 8)}`);
