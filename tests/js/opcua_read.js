// node-opcua as an independent OPC UA client: connects to the demo anonymously
// (security None), reads ServerStatus, browses Objects/WinCC, reads one tag and
// prints one JSON line. Usage: node opcua_read.js ENDPOINT NAMESPACE_URI TAG
const {
  OPCUAClient, MessageSecurityMode, SecurityPolicy, AttributeIds, resolveNodeId,
} = require("node-opcua-client");
const [endpoint, nsUri, tag] = process.argv.slice(2);

(async () => {
  const client = OPCUAClient.create({
    applicationName: "node-opcua independent check",
    securityMode: MessageSecurityMode.None,
    securityPolicy: SecurityPolicy.None,
    endpointMustExist: false,
    connectionStrategy: { maxRetry: 2, initialDelay: 500 },
  });
  const out = {};
  try {
    await client.connect(endpoint);
    const session = await client.createSession();
    const status = await session.read({ nodeId: "i=2256", attributeId: AttributeIds.Value });
    const s = status.value.value;
    out.status = status.statusCode.name;
    out.state = s.state;
    out.currentTime = s.currentTime.toISOString();
    out.softwareVersion = s.buildInfo.softwareVersion;
    out.productName = s.buildInfo.productName;
    out.buildDate = s.buildInfo.buildDate.toISOString();
    const nsArray = (await session.read({ nodeId: "i=2255", attributeId: AttributeIds.Value })).value.value;
    const ns = nsArray.indexOf(nsUri);
    out.namespaceIndex = ns;
    const objects = await session.browse("i=85");
    const wincc = objects.references.find((r) => r.browseName.name === "WinCC");
    out.winccFolder = wincc ? wincc.nodeId.toString() : null;
    if (wincc) {
      const children = await session.browse(wincc.nodeId);
      out.winccChildren = children.references.map((r) => r.browseName.name).sort();
    }
    const value = await session.read({ nodeId: `ns=${ns};s=${tag}`, attributeId: AttributeIds.Value });
    out.tagStatus = value.statusCode.name;
    out.tagValue = value.value.value;
    await session.close();
    await client.disconnect();
    console.log(JSON.stringify(out));
    process.exit(0);
  } catch (e) {
    out.error = String(e);
    console.log(JSON.stringify(out));
    process.exit(1);
  }
})();
