#!/usr/bin/env node
// Offline Sigstore verifier for Pier's end-to-end tests.
//
//   node verify.js --key PUBLIC_KEY_PEM --artifact FILE --bundle BUNDLE_JSON
//
// Verifies a message-signature Sigstore bundle over FILE with the given public
// key through @sigstore/verify, requiring no transparency-log entry, no
// timestamp and no CT log (all thresholds 0). Prints "verified" and exits 0 on
// success; prints the error and exits 1 on any failure.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const { bundleFromJSON } = require('@sigstore/bundle');
const {
  Verifier,
  VerificationError,
  toSignedEntity,
  toTrustMaterial,
} = require('@sigstore/verify');

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

function main() {
  const args = parseArgs(process.argv.slice(2), ['key', 'artifact', 'bundle']);
  const publicKey = crypto.createPublicKey(fs.readFileSync(args.key));
  const spkiDer = publicKey.export({ type: 'spki', format: 'der' });
  const keyHint = crypto.createHash('sha256').update(spkiDer).digest('hex');
  const artifact = fs.readFileSync(args.artifact);
  const bundleJSON = JSON.parse(fs.readFileSync(args.bundle, 'utf8'));

  // Parses and validates the bundle's structure (throws ValidationError).
  const bundle = bundleFromJSON(bundleJSON);
  if (bundle.content.$case !== 'messageSignature') {
    throw new Error(`expected a messageSignature bundle, got ${bundle.content.$case}`);
  }
  if (bundle.verificationMaterial.content.$case !== 'publicKey') {
    throw new Error(`expected publicKey verification material, got ${bundle.verificationMaterial.content.$case}`);
  }

  // The only trusted material: the given public key. No CAs, TSAs, tlogs, CT logs.
  // The key finder is called with the bundle's hint; an empty hint is accepted,
  // a hint naming another key is refused.
  const keyFinder = (hint) => {
    if (hint && hint !== keyHint) {
      throw new VerificationError({
        code: 'PUBLIC_KEY_ERROR',
        message: `key hint mismatch: bundle names ${hint}, given key is ${keyHint}`,
      });
    }
    return { publicKey, validFor: () => true };
  };
  const trust = toTrustMaterial(
    { certificateAuthorities: [], timestampAuthorities: [], tlogs: [], ctlogs: [] },
    keyFinder
  );
  const verifier = new Verifier(trust, {
    tlogThreshold: 0,
    ctlogThreshold: 0,
    timestampThreshold: 0,
  });
  verifier.verify(toSignedEntity(bundle, artifact));

  // @sigstore/verify checks the signature over the artifact bytes, but only
  // compares messageDigest with the artifact when checking a tlog entry (none
  // here), so check the digest too.
  const md = bundle.content.messageSignature.messageDigest;
  const digest = crypto.createHash('sha256').update(artifact).digest();
  const algorithm = bundleJSON.messageSignature.messageDigest.algorithm;
  if (algorithm !== 'SHA2_256') {
    throw new Error(`unsupported messageDigest algorithm ${algorithm}`);
  }
  if (!Buffer.from(md.digest).equals(digest)) {
    throw new Error('messageDigest does not match the SHA2_256 digest of the artifact');
  }
}

try {
  main();
  process.stdout.write('verified\n');
} catch (err) {
  process.stderr.write(`verification failed: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
}
