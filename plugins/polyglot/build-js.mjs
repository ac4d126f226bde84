#!/usr/bin/env node
// Build the JavaScript authorizer plugin.  Usage: node build-js.mjs WITDIR OUT.wasm
// Needs @bytecodealliance/componentize-js 0.23.0, found under
// $COMPONENTIZE_JS_DIR/node_modules (default: this script's directory).
import { writeFile } from 'node:fs/promises';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [witDir, out] = process.argv.slice(2);
if (!witDir || !out) {
  console.error('usage: node build-js.mjs WITDIR OUT.wasm');
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const base = process.env.COMPONENTIZE_JS_DIR ?? here;
// The package exports only an `import` condition, so point at its entry file directly.
const entry = join(resolve(base), 'node_modules/@bytecodealliance/componentize-js/src/componentize.js');
const { componentize } = await import(pathToFileURL(entry).href);

const { component, imports } = await componentize({
  sourcePath: join(here, 'js', 'authorizer.js'),
  witPath: resolve(witDir),
  worldName: 'authorizer',
  // Without these the component imports wasi:http, which `pier plugin check` refuses.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
console.error(`wrote ${out} (${component.length} bytes); guest imports used: ${JSON.stringify(imports)}`);
