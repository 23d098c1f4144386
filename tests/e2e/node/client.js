// Calls a headserve server from Node.js using only protos/ (no generated code):
//   node client.js HOST:PORT PROTOS_DIR
// Prints one JSON object with what it got, for the Python test to check.
"use strict";
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [target, protos] = process.argv.slice(2);
const files = ["encoder", "classifier", "question_answerer", "models", "heads"].map(
  (f) => `headserve/v1/${f}.proto`
);
const def = loader.loadSync(files, { includeDirs: [protos, `${protos}/third_party`], keepCase: true, defaults: true, oneofs: true, longs: Number });
const v1 = grpc.loadPackageDefinition(def).headserve.v1;
const creds = grpc.credentials.createInsecure();
const encoder = new v1.Encoder(target, creds);
const classifier = new v1.Classifier(target, creds);
const qa = new v1.QuestionAnswerer(target, creds);
const models = new v1.Models(target, creds);
const heads = new v1.Heads(target, creds);

const unary = (client, method, request) =>
  new Promise((resolve) => client[method](request, (err, res) => resolve(err ? { code: err.code, details: err.details } : res)));

function stream(client, method, requests) {
  return new Promise((resolve, reject) => {
    const call = client[method]();
    const out = [];
    call.on("data", (r) => out.push({ id: r.id, outcome: r.outcome, code: r.error ? r.error.code : 0, message: r.error ? r.error.message : "" }));
    call.on("end", () => resolve(out));
    call.on("error", reject);
    for (const r of requests) call.write(r);
    call.end();
  });
}

(async () => {
  const context = "Bob works in Berlin. Zoë works in Paris.";
  const encode = await unary(encoder, "Encode", { items: [{ text: "hello world" }, { text: "a", text_pair: "pair" }], options: { pooling: "POOLING_MEAN" } });
  const badEncode = await unary(encoder, "Encode", { items: [{ text: "fine" }, { text: "" }] });
  const classify = await unary(classifier, "Classify", { items: [{ text: "I loved it" }] });
  const answer = await unary(qa, "AnswerQuestion", { items: [{ question: "Where does Zoë work?", context }], options: { top_k: 2 } });
  const info = await unary(models, "GetModelInfo", {});
  // A plugin head through the generic service; options are a google.protobuf.Struct
  // (proto-loader names its Value fields in camelCase: stringValue, boolValue...).
  const run = await unary(heads, "Run", {
    head: "ner", items: [{ text: "Bob works in Berlin." }],
    options: { fields: { aggregation: { stringValue: "none" }, return_logits: { boolValue: true } } },
  });
  const badRun = await unary(heads, "Run", { head: "ner", items: [{ text: "x" }], options: { fields: { aggregation: { stringValue: "max" } } } });
  if (!run.results) throw new Error(JSON.stringify(run));
  const entities = run.results[0].fields.fields.entities.listValue.values.map((v) => {
    const f = v.structValue.fields;
    return { label: f.label.stringValue, start: f.start.numberValue, end: f.end.numberValue, text: f.text.stringValue };
  });
  const logits = run.results[0].tensors.logits;
  const streamed = await stream(classifier, "ClassifyStream", [
    { id: "a", items: [{ text: "one" }] },
    { id: "b", items: [{ text: "" }] },
    { id: "c", items: [{ text: "three" }] },
  ]);
  console.log(JSON.stringify({
    encode: { dims: encode.results.map((r) => r.vector.length), tokens: encode.usage.input_tokens },
    badEncode,
    classify: classify.results[0].heads[0].labels.map((l) => [l.label, l.probability]),
    answers: answer.results[0].answers.map((a) => ({ text: a.text, start: a.start, end: a.end })),
    context,
    heads: info.heads.map((h) => h.name),
    streamed,
    run: { task: run.task, entities, logitsShape: logits.shape, logitsBytes: logits.data.length },
    badRun,
  }));
  for (const c of [encoder, classifier, qa, models, heads]) c.close();
})().catch((e) => { console.error(e); process.exit(1); });
