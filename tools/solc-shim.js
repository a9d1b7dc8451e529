#!/usr/bin/env node
// Native-solc CLI look-alike over solc-js (npm "solc"), enough for py-solc-x / brownie:
//   --version | --standard-json [--allow-paths P[,P]] [--base-path P] [--include-path P]
'use strict';
const fs = require('fs'), path = require('path');
const solc = require('solc');
const args = process.argv.slice(2);
const roots = [process.cwd()];
let standardJson = false;
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--version' || a === '-v') {
    process.stdout.write('solc, the solidity compiler commandline interface\nVersion: ' + solc.version() + '\n');
    process.exit(0);
  } else if (a === '--standard-json') standardJson = true;
  else if (a === '--allow-paths' || a === '--base-path' || a === '--include-path') roots.push(...String(args[++i]).split(','));
  else if (a === '--overwrite' || a === '-') { /* ignored */ }
  else if (a === '--output-dir' || a === '-o') i++;
  else { process.stderr.write(`unrecognised option '${a}'\n`); process.exit(1); }
}
if (!standardJson) { process.stderr.write('solc-js shim: only --standard-json is supported\n'); process.exit(1); }
function findImports(p) {
  for (const r of [''].concat(roots)) {
    const f = path.isAbsolute(p) ? p : path.resolve(r || process.cwd(), p);
    try { return { contents: fs.readFileSync(f, 'utf8') }; } catch (e) { /* next */ }
  }
  return { error: 'File not found: ' + p };
}
const input = fs.readFileSync(0, 'utf8');
process.stdout.write(solc.compile(input, { import: findImports }));
