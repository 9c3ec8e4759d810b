// mqtt.js as an MQTT 5 client (its default protocol): connects to the demo's
// broker, subscribes to a filter late, and prints one JSON line with the
// retained topics it got. Usage: node mqtt5_retained.js PORT FILTER WANT QOS
const mqtt = require("mqtt");
const [port, filter, want, qos] = process.argv.slice(2);
const topics = new Set();
const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
  protocolVersion: 5,
  clientId: `mqttjs-${process.pid}`,
  reconnectPeriod: 0,
  connectTimeout: 10000,
});
const done = (error) => {
  console.log(JSON.stringify({ error, count: topics.size, topics: [...topics].sort() }));
  client.end(true);
  process.exit(error ? 1 : 0);
};
const timer = setTimeout(() => done(null), 20000);
client.on("error", (e) => done(String(e)));
client.on("connect", (connack) => {
  if (connack.reasonCode) return done(`CONNACK reason ${connack.reasonCode}`);
  client.subscribe(filter, { qos: Number(qos) }, (err) => err && done(String(err)));
});
client.on("message", (topic, _payload, packet) => {
  if (packet.retain) topics.add(topic);
  if (topics.size >= Number(want)) {
    clearTimeout(timer);
    // Anything retained still in flight would show in a short grace period.
    setTimeout(() => done(null), 500);
  }
});
