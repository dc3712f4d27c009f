// ONNX Runtime's fused com.microsoft MultiHeadAttention on the harness inputs.
// usage: node ort.mjs DIR THREADS REPEAT   -> prints JSON {medianSeconds, threads}; writes DIR/ort_out.npy
import fs from "node:fs";
import ort from "onnxruntime-node";

const [dir, threadsText, repeatText] = process.argv.slice(2);
const threads = Number(threadsText), repeat = Number(repeatText);

function readNpy(path) {
  const buf = fs.readFileSync(path);
  const headerLength = buf.readUInt16LE(8);
  const header = buf.toString("latin1", 10, 10 + headerLength);
  if (!header.includes("'<f4'") || header.includes("'fortran_order': True")) throw new Error(`${path}: expected C-order <f4`);
  const shape = header.match(/\(([^)]*)\)/)[1].split(",").map(s => s.trim()).filter(Boolean).map(Number);
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset + 10 + headerLength, buf.byteOffset + buf.length));
  return { shape, data };
}

function writeNpy(path, data, shape) {
  let dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}), }`;
  const total = Math.ceil((10 + dict.length + 1) / 64) * 64;
  dict = dict.padEnd(total - 10 - 1) + "\n";
  const head = Buffer.alloc(10);
  head.write("\x93NUMPY", 0, "latin1"); head[6] = 1; head[7] = 0; head.writeUInt16LE(dict.length, 8);
  fs.writeFileSync(path, Buffer.concat([head, Buffer.from(dict, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

// [h, n, d] -> [1, n, h*d]
function toSequenceMajor({ shape: [h, n, d], data }) {
  const out = new Float32Array(h * n * d);
  for (let head = 0; head < h; head++)
    for (let i = 0; i < n; i++)
      out.set(data.subarray((head * n + i) * d, (head * n + i + 1) * d), (i * h + head) * d);
  return new ort.Tensor("float32", out, [1, n, h * d]);
}

const q = readNpy(`${dir}/q.npy`), k = readNpy(`${dir}/k.npy`), v = readNpy(`${dir}/v.npy`);
const [h, n, d] = q.shape;
const feeds = { query: toSequenceMajor(q), key: toSequenceMajor(k), value: toSequenceMajor(v) };
const session = await ort.InferenceSession.create(`${dir}/mha.onnx`, {
  intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: "sequential", graphOptimizationLevel: "all",
});

let result = await session.run(feeds);
const times = [];
for (let r = 0; r < repeat; r++) {
  const start = process.hrtime.bigint();
  result = await session.run(feeds);
  times.push(Number(process.hrtime.bigint() - start) / 1e9);
}
times.sort((a, b) => a - b);
const median = times.length % 2 ? times[(times.length - 1) / 2] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;

// [1, n, h*d] -> [h, n, d]
const o = result.output.data, back = new Float32Array(h * n * d);
for (let i = 0; i < n; i++)
  for (let head = 0; head < h; head++)
    back.set(o.subarray((i * h + head) * d, (i * h + head + 1) * d), (head * n + i) * d);
writeNpy(`${dir}/ort_out.npy`, back, [h, n, d]);
console.log(JSON.stringify({ medianSeconds: median, threads }));
