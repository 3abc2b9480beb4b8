#!/usr/bin/env node
// A Ferry region client in another language: Node's @grpc/grpc-js with
// @grpc/proto-loader, loading the .proto files at run time (no generated code).
//
//   node tests/node/region_client.js [REGION_ADDRESS] [MISSING_SERVER_ID]
//
// Calls HostService.ListHosts, ServerService.ListServers (system scope, with
// details) and a GetServer of an id that does not exist, and prints one JSON
// object on stdout. Exit code 0 when every call behaved (the bad GetServer must
// fail with NOT_FOUND), 1 otherwise.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const ROOT = path.resolve(__dirname, '..', '..');
const PROTOS = path.join(ROOT, 'protos');
const address = process.argv[2] || process.env.FERRY_REGION || '127.0.0.1:7700';
const missingId = process.argv[3] || 'no-such-server-00000000';
const DEADLINE_MS = 10000;

const definition = protoLoader.loadSync(
  ['ferry/region/v1/host_service.proto', 'ferry/region/v1/server_service.proto'],
  {
    // google/protobuf/*.proto come with protobufjs, proto-loader's dependency.
    includeDirs: [PROTOS, path.join(ROOT, 'node_modules', 'protobufjs')],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  },
);
const pkg = grpc.loadPackageDefinition(definition).ferry.region.v1;
const credentials = grpc.credentials.createInsecure();
const hosts = new pkg.HostService(address, credentials);
const servers = new pkg.ServerService(address, credentials);

function call(client, method, request) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => {
      if (err) {
        resolve({
          ok: false,
          code: err.code,
          codeName: grpc.status[err.code],
          details: err.details,
        });
      } else {
        resolve({ ok: true, response });
      }
    });
  });
}

async function main() {
  const out = { address };
  out.listHosts = await call(hosts, 'ListHosts', {});
  out.listServers = await call(servers, 'ListServers', {
    scope: 'LIST_SCOPE_SYSTEM',
    details: true,
    page_size: 100,
  });
  out.getMissingServer = await call(servers, 'GetServer', { id: missingId });
  hosts.close();
  servers.close();
  process.stdout.write(JSON.stringify(out, null, 2) + '\n');
  const good = out.listHosts.ok && out.listServers.ok
    && !out.getMissingServer.ok && out.getMissingServer.codeName === 'NOT_FOUND';
  process.exitCode = good ? 0 : 1;
}

main().catch((e) => {
  process.stderr.write(`region_client: ${e.stack || e}\n`);
  process.exitCode = 2;
});
