// Hop B of the OpenTelemetry chain test: a plain Node `http` server that propagates context with
// OpenTelemetry-JS (@opentelemetry/api with @opentelemetry/core's W3CTraceContextPropagator and
// W3CBaggagePropagator as the global composite propagator): it extracts the incoming headers and
// injects them into its call to $NEXT_URL, never copying them by hand. `GET /` answers
// {"service", "version", "next"}; /healthz is the health check. Listens on 127.0.0.1:$PORT.
const http = require("http");
const api = require("@opentelemetry/api");
const {
  CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator,
} = require("@opentelemetry/core");

api.propagation.setGlobalPropagator(new CompositePropagator({
  propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
}));

const NAME = process.env.LANEWAY_SERVICE || "?";
const VERSION = process.env.VERSION || "baseline";
const NEXT = process.env.NEXT_URL || "";
const agent = new http.Agent({ keepAlive: true });

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

function callNext(ctx) {
  return new Promise((resolve, reject) => {
    const headers = {};
    api.propagation.inject(ctx, headers);
    const req = http.get(new URL("/", NEXT), { headers, agent, timeout: 10000 }, (resp) => {
      let data = "";
      resp.setEncoding("utf8");
      resp.on("data", (chunk) => { data += chunk; });
      resp.on("end", () => {
        if (resp.statusCode !== 200) reject(new Error(`next hop answered ${resp.statusCode}: ${data}`));
        else resolve(JSON.parse(data));
      });
    });
    req.on("timeout", () => req.destroy(new Error("next hop timed out")));
    req.on("error", reject);
  });
}

const server = http.createServer(async (req, res) => {
  if (req.url === "/healthz") { send(res, 200, { ok: true }); return; }
  const ctx = api.propagation.extract(api.ROOT_CONTEXT, req.headers);
  try {
    const next = NEXT ? await callNext(ctx) : null;
    send(res, 200, { service: NAME, version: VERSION, next });
  } catch (err) {
    send(res, 502, { service: NAME, error: String(err) });
  }
});
server.keepAliveTimeout = 30000;
server.listen(Number(process.env.PORT), "127.0.0.1", () => {
  console.log(`${NAME} ${VERSION} listening on ${process.env.PORT}`);
});
process.on("SIGTERM", () => process.exit(0));
