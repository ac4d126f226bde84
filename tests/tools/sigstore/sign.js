#!/usr/bin/env node
// Offline Sigstore signer for Pier's end-to-end tests.
//
//   node sign.js --key PRIVATE_KEY_PEM --artifact FILE --out BUNDLE_JSON
//
// Signs FILE with a local ECDSA P-256 key through @sigstore/sign's
// MessageSignatureBundleBuilder, with no witnesses (no Fulcio, no Rekor, no
// timestamp authority), and writes the Sigstore bundle JSON to BUNDLE_JSON.
// The bundle's verification material is the public key, identified by the
// hint = lowercase hex SHA-256 of the public key's DER SubjectPublicKeyInfo.
// Prints the bundle's mediaType on stdout.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const { MessageSignatureBundleBuilder } = require('@sigstore/sign');
const {
  BUNDLE_V03_MEDIA_TYPE,
  assertBundleLatest,
  bundleToJSON,
} = require('@sigstore/bundle');

function parseArgs(argv, names) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    if (!names.includes(name) || i + 1 >= argv.length) {
      throw new Error(`usage: --${names.join(' FILE --')} FILE (bad argument: ${argv[i]})`);
    }
    out[name] = argv[i + 1];
  }
  for (const n of names) {
    if (!out[n]) throw new Error(`missing --${n}`);
  }
  return out;
}

// A Signer (the @sigstore/sign interface: sign(data) => {signature, key})
// backed by a local private key. `data` is what the bundle builder asks to be
// signed: for MessageSignatureBundleBuilder it is the raw artifact bytes.
class LocalKeySigner {
  constructor(privateKey) {
    if (privateKey.asymmetricKeyType !== 'ec' ||
        privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
      throw new Error('the private key must be an ECDSA P-256 (prime256v1) key');
    }
    this.privateKey = privateKey;
    const publicKey = crypto.createPublicKey(privateKey);
    const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
    this.publicKeyPem = publicKey.export({ type: 'spki', format: 'pem' });
    this.hint = crypto.createHash('sha256').update(spkiDer).digest('hex');
  }

  async sign(data) {
    // ECDSA P-256 over SHA-256(data); DER-encoded (ASN.1 SEQUENCE{r,s}) signature.
    const signature = crypto.sign('sha256', data, this.privateKey);
    return {
      signature,
      key: { $case: 'publicKey', publicKey: this.publicKeyPem, hint: this.hint },
    };
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2), ['key', 'artifact', 'out']);
  const privateKey = crypto.createPrivateKey(fs.readFileSync(args.key));
  const artifact = { data: fs.readFileSync(args.artifact) };

  const builder = new MessageSignatureBundleBuilder({
    signer: new LocalKeySigner(privateKey),
    witnesses: [],
  });
  const bundle = await builder.create(artifact);

  // MessageSignatureBundleBuilder (4.x) always builds with the v0.2 media
  // type (it asks @sigstore/bundle for the certificate-chain form, which is
  // only legal up to v0.2). With a public key there is no certificate at all,
  // so the content is valid v0.3: stamp the v0.3 media type and check it.
  bundle.mediaType = BUNDLE_V03_MEDIA_TYPE;
  assertBundleLatest(bundle);

  const json = bundleToJSON(bundle);
  fs.writeFileSync(args.out, JSON.stringify(json, null, 2) + '\n');
  process.stdout.write(json.mediaType + '\n');
}

main().catch((err) => {
  process.stderr.write(`sign failed: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
});
