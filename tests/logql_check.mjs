// Parse LogQL queries with Grafana's own grammar (@grafana/lezer-logql, the parser of Grafana's Loki
// query editor) and report every error node.
//
// stdin: one JSON list of query strings. stdout: one JSON list, for each query in order,
// {"query": ..., "errors": [{"from", "to", "text"}, ...]} (an empty list: it parses).
// Exit 0 when the report was written (whatever it says), 2 on bad input or a missing grammar.
//
// The grammar is looked up in DEPLOYER_NODE_TOOLS (default: .tools/node at the repository's root,
// where scripts/bootstrap installs it).
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const prefix = process.env.DEPLOYER_NODE_TOOLS || path.join(root, ".tools", "node");
const require = createRequire(path.join(prefix, "package.json"));

let parser;
try {
  ({ parser } = require("@grafana/lezer-logql"));
} catch (error) {
  process.stderr.write(`@grafana/lezer-logql not found under ${prefix} (scripts/bootstrap installs it): ${error.message}\n`);
  process.exit(2);
}

let queries;
try {
  queries = JSON.parse(readFileSync(0, "utf8"));
} catch (error) {
  process.stderr.write(`stdin is not JSON: ${error.message}\n`);
  process.exit(2);
}
if (!Array.isArray(queries) || !queries.every((query) => typeof query === "string")) {
  process.stderr.write("stdin must be one JSON list of strings\n");
  process.exit(2);
}

const report = queries.map((query) => {
  const errors = [];
  parser.parse(query).iterate({
    enter(node) {
      // lezer marks what it could not parse with its error node type (id 0, type.isError)
      if (node.type.isError || node.type.id === 0) {
        errors.push({ from: node.from, to: node.to, text: query.slice(Math.max(0, node.from - 20), node.to + 20) });
      }
    },
  });
  if (query.trim() === "") {
    errors.push({ from: 0, to: 0, text: "empty query" });
  }
  return { query, errors };
});
process.stdout.write(JSON.stringify(report) + "\n");
