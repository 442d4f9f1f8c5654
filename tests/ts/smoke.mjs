// Smoke test of @comfyorg/sdk against a comfyd server (COMFY_BASE_URL); the fake test nodes.
// Prints one JSON line with what it saw; tests/server/test_api_v2_typescript.py checks it.
import { Comfy } from "@comfyorg/sdk";

const graph = (seconds, steps, tag) => ({
  3: { class_type: "TestSleep", inputs: { seconds, steps, tag } },
  9: { class_type: "TestSave", inputs: { value: ["3", 0], filename_prefix: "ts", folder: "output" } },
});

const client = new Comfy();
const seen = {};
const job = await client.submit(client.workflows.fromJson(graph(0.05, 4, "ts")));
seen.kinds = [];
for await (const event of job.events()) {
  seen.kinds.push(event.kind === "statusChange" ? `status:${event.status}` : event.kind);
}
await job.wait();
seen.status = job.status;
const [out] = job.outputs;
seen.output = { name: out.name, type: out.type, size: out.sizeBytes, id: out.id };
seen.bytes = (await out.toBytes()).length;
seen.head = Array.from(await out.toBytes({ range: [0, 3] }));
seen.format = (await job.getWorkflow()).format;
seen.again = (await client.jobs.get(job.id)).status;

const asset = client.assets.fromBytes(new TextEncoder().encode("hello from node"), {
  filename: "ts/hello.txt", contentType: "text/plain",
});
seen.assetId = await asset.commit();
seen.assetNew = asset.createdNew;

const long = await client.submit(client.workflows.fromJson(graph(20, 400, "ts-long")));
await new Promise((r) => setTimeout(r, 300));
await long.cancel();
await long.wait();
seen.canceled = long.status;
console.log(JSON.stringify(seen));
