// Type-checks Grafana dashboard JSON files against the `Dashboard` type that Grafana publishes
// in the @grafana/schema package (generated from its CUE dashboard schema).
//
//   node tests/dashboard-schema/check.mjs grafana/dashboards/*.json
//
// Each file becomes, in memory, `const dashboard = <the JSON> satisfies Json<Dashboard>;`:
// TypeScript then reports missing required fields, wrong types, values outside an enum (a link
// `type`, a variable `refresh`) and unknown keys (excess properties of object literals), with the
// line and column in the JSON file. `Json<T>` only turns the schema's string enums into the
// string literals a JSON file holds (`ThresholdsMode.Absolute` -> "absolute"); nothing else is
// loosened. Exit status 0 when every file conforms, 1 otherwise.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node check.mjs DASHBOARD.json...");
  process.exit(2);
}

// One virtual .ts file per dashboard, beside this script so that @grafana/schema resolves from
// its node_modules. The JSON starts right after PREFIX, on the line after HEADER.
const HEADER = [
  'import type { Dashboard } from "@grafana/schema";',
  "type Json<T> = 0 extends 1 & T ? T",
  "  : T extends string ? `${T}`",
  "  : T extends readonly (infer U)[] ? Json<U>[]",
  "  : T extends object ? { [K in keyof T]: Json<T[K]> }",
  "  : T;",
  "",
].join("\n");
const HEADER_LINES = HEADER.split("\n").length - 1;
const PREFIX = "export const dashboard = ";
const virtual = new Map();
const origin = new Map();
for (const [i, file] of files.entries()) {
  const text = fs.readFileSync(file, "utf8");
  JSON.parse(text); // a syntax error is reported by JSON.parse, with its position
  const name = path.join(here, `__dashboard_${i}__.ts`);
  virtual.set(name, `${HEADER}${PREFIX}${text.trimEnd()} satisfies Json<Dashboard>;\n`);
  origin.set(name, file);
}

const options = {
  strict: true,
  noEmit: true,
  target: ts.ScriptTarget.ES2022,
  module: ts.ModuleKind.ESNext,
  moduleResolution: ts.ModuleResolutionKind.Bundler,
  skipLibCheck: true,
  types: [],
};
const host = ts.createCompilerHost(options);
const readFile = host.readFile.bind(host);
const fileExists = host.fileExists.bind(host);
const getSourceFile = host.getSourceFile.bind(host);
host.readFile = (name) => virtual.get(name) ?? readFile(name);
host.fileExists = (name) => virtual.has(name) || fileExists(name);
host.getSourceFile = (name, languageVersion, onError, create) =>
  virtual.has(name)
    ? ts.createSourceFile(name, virtual.get(name), languageVersion, true)
    : getSourceFile(name, languageVersion, onError, create);

const program = ts.createProgram([...virtual.keys()], options, host);
const diagnostics = ts.getPreEmitDiagnostics(program);
let problems = 0;
for (const d of diagnostics) {
  const message = ts.flattenDiagnosticMessageText(d.messageText, "\n    ");
  if (d.file && origin.has(d.file.fileName)) {
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
    const jsonLine = line - HEADER_LINES; // 0-based; the JSON's first line follows PREFIX
    const column = jsonLine === 0 ? character - PREFIX.length : character;
    console.log(`${origin.get(d.file.fileName)}:${jsonLine + 1}:${column + 1}: ${message}`);
  } else {
    console.log(`${d.file ? d.file.fileName : "typescript"}: ${message}`);
  }
  problems += 1;
}
const schema = JSON.parse(
  fs.readFileSync(path.join(here, "node_modules/@grafana/schema/package.json"), "utf8"),
);
if (problems) {
  console.log(`${problems} problem(s) against @grafana/schema ${schema.version} (Dashboard)`);
  process.exit(1);
}
console.log(`${files.length} dashboard(s) conform to @grafana/schema ${schema.version} (Dashboard)`);
