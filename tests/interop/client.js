// grpc-js (and Node's own http2, which grpc-js runs on) against a listseg Membership port.
//
// Driven by tests/test_interop.py: `node client.js PROTO TARGET < JOBS_JSON` runs each job in turn
// and prints one JSON line per job: {"job": ..., "outcomes": {outcome: count}, "seconds": s, ...}.
// An outcome is a status code name, with the details for anything but OK, DEADLINE_EXCEEDED and
// CANCELLED (those details vary call by call). Every job is bounded in count and time.
'use strict';
const fs = require('fs');
const http2 = require('http2');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [protoPath, target] = process.argv.slice(2);
const definition = protoLoader.loadSync(protoPath, {keepCase: true, longs: String, enums: String, defaults: true});
const Membership = grpc.loadPackageDefinition(definition).listseg.v1.Membership;
const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));
const QUIET = new Set(['OK', 'DEADLINE_EXCEEDED', 'CANCELLED']);

function outcome(err) {
  if (!err) return 'OK';
  const name = CODE_NAMES[err.code] || `code ${err.code}`;
  return QUIET.has(name) ? name : `${name}: ${String(err.details).slice(0, 80)}`;
}

function newClient() {
  // A channel of its own per job: one job's broken connection does not carry over to the next.
  return new Membership(target, grpc.credentials.createInsecure(), {'grpc.max_receive_message_length': 64 << 20});
}

// Calls `start(client, done)` `count` times, `concurrency` at a time, within `budgetMs`.
function run(job, start) {
  const client = newClient();
  const outcomes = {};
  const extra = {};
  const began = Date.now();
  let issued = 0, finished = 0;
  return new Promise((resolve) => {
    const finish = () => {
      client.close();
      resolve({outcomes, issued, seconds: (Date.now() - began) / 1000, ...extra});
    };
    const next = () => {
      if (issued >= job.count || Date.now() - began > (job.budget_ms || 20000)) {
        if (finished === issued) finish();
        return;
      }
      issued++;
      start(client, (name, info) => {
        outcomes[name] = (outcomes[name] || 0) + 1;
        if (info) Object.assign(extra, info);
        finished++;
        next();
      });
    };
    for (let i = 0; i < (job.concurrency || 1); i++) next();
  });
}

// Generated methods, real messages, each request picked at random from the job's `requests` (each
// with its `method`, else the job's); an IsMember answer is checked against the request's `member`.
function call(job) {
  return (client, done) => {
    const options = {deadline: new Date(Date.now() + (job.deadline_ms || 10000))};
    const request = job.requests[Math.floor(Math.random() * job.requests.length)];
    const c = client[request.method || job.method](request.message, new grpc.Metadata(), options, (err, answer) => {
      if (!err && request.member !== undefined && answer.member !== request.member) {
        done(`WRONG ANSWER: member=${answer.member} for ${JSON.stringify(request.message)}`);
        return;
      }
      done(outcome(err));
    });
    if (job.cancel_after_ms !== undefined) setTimeout(() => c.cancel(), Math.random() * job.cancel_after_ms);
  };
}

// The raw path with a serializer that sends `hex` as the message bytes: garbage where protobuf goes.
function garbage(job) {
  const bytes = Buffer.from(job.hex, 'hex');
  return (client, done) => {
    client.makeUnaryRequest(`/listseg.v1.Membership/${job.method}`, () => bytes, (b) => b, null,
        new grpc.Metadata(), {deadline: Date.now() + 10000}, (err) => done(outcome(err)));
  };
}

// A unary method called as a client stream that half-closes without writing a message.
function noMessage(job) {
  return (client, done) => {
    const stream = client.makeClientStreamRequest(`/listseg.v1.Membership/${job.method}`, (b) => b, (b) => b,
        new grpc.Metadata(), {deadline: Date.now() + 10000}, (err) => done(outcome(err)));
    stream.end();
  };
}

// Node's http2 with the DATA frame's bytes exactly as given (a compressed flag with no
// grpc-encoding, a length prefix cut short, ...); the outcome is the grpc-status that came back.
function rawFrames(job) {
  const session = http2.connect(`http://${target}`);
  session.on('error', () => {});
  const data = Buffer.from(job.hex, 'hex');
  const start = (unused, done) => {
    let status = null, message = '';
    const req = session.request({':method': 'POST', ':path': `/listseg.v1.Membership/${job.method}`,
                                 'content-type': 'application/grpc', 'te': 'trailers', 'grpc-timeout': '10S'});
    const take = (headers) => {
      if (headers['grpc-status'] !== undefined) {
        status = Number(headers['grpc-status']);
        message = decodeURIComponent(headers['grpc-message'] || '');
      }
    };
    req.on('response', take);
    req.on('trailers', take);
    req.on('data', () => {});
    req.on('error', (e) => { if (status === null) status = `stream error ${e.code || e.message}`; });
    req.on('close', () => {
      if (status === null) done('NO STATUS');
      else if (typeof status === 'string') done(status);
      else done(outcome(status === 0 ? null : {code: status, details: message}));
    });
    req.end(data);
  };
  return run(job, start).then((result) => { session.close(); return result; });
}

const KINDS = {call, garbage, no_message: noMessage};

async function main() {
  for (const job of JSON.parse(fs.readFileSync(0, 'utf8'))) {
    const result = job.kind === 'raw' ? await rawFrames(job) : await run(job, KINDS[job.kind](job));
    process.stdout.write(JSON.stringify({job: job.name, ...result}) + '\n');
  }
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
