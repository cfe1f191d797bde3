// One hop through OpenTelemetry-JS: extract each case's baggage headers, inject them again.
const api = require("@opentelemetry/api");
const { W3CBaggagePropagator } = require("@opentelemetry/core");
const propagator = new W3CBaggagePropagator();
const getter = { get: (carrier, key) => carrier[key], keys: (carrier) => Object.keys(carrier) };
const setter = { set: (carrier, key, value) => { carrier[key] = value; } };
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = cases.map((headers) => {
  const carrier = { baggage: headers.length === 1 ? headers[0] : headers };
  const ctx = propagator.extract(api.ROOT_CONTEXT, carrier, getter);
  const entry = api.propagation.getBaggage(ctx)?.getEntry("laneway-key");
  const next = {};
  propagator.inject(ctx, next, setter);
  return { held: entry ? entry.value : null, injected: next.baggage ?? null };
});
process.stdout.write(JSON.stringify(out));
