/** `rampack keygen`: an Ed25519 key pair for signing manifests. */
import { Command } from 'commander';
import { writeKeyPair } from '../manifest/sign.ts';

interface KeygenFlags {
  private: string;
  public: string;
}

async function runKeygen(flags: KeygenFlags): Promise<void> {
  const keyId = await writeKeyPair(flags.private, flags.public);
  process.stdout.write(`${JSON.stringify({ private: flags.private, public: flags.public, keyId })}\n`);
}

export function keygenCommand(): Command {
  return new Command('keygen')
    .description('make an Ed25519 key pair (PEM) for signing manifests; the private key file gets mode 0600')
    .option('--private <file>', 'private key file (PKCS#8 PEM); keep it secret, e.g. as a CI secret', 'rampack-signing.key')
    .option('--public <file>', 'public key file (SPKI PEM); give it to the runtime', 'rampack-signing.pub')
    .addHelpText(
      'after',
      `
Existing files are never overwritten. Sign with --key FILE, or put the private key's PEM text
in RAMPACK_SIGNING_KEY (e.g. a CI secret).`,
    )
    .action(runKeygen);
}
