#!/usr/bin/env node
// Watch one upload's live events with the real, unmodified socket.io-client.
// Used by tests/protocol/test_realtime.py; run with --help for the options.
//
// Prints one JSON line per thing that happens, on stdout: the join acknowledgement as
// {"event": "joinUploadRoom", "data": ack}, then each server event as
// {"event": name, "data": payload}. Exits 0 after uploadComplete or uploadError; exits 1
// (with a message on stderr) on a connect error, a refused join, a lost connection or the
// time-out; 2 on a bad command line.
import { parseArgs } from 'node:util'
import { io } from 'socket.io-client'

const USAGE = `usage: node watch-upload.mjs --url SERVER_URL --upload-id=ID [--timeout-ms N]

  --url URL          the server, e.g. http://127.0.0.1:3000 (Socket.IO at /socket.io/)
  --upload-id=ID     the upload to watch (the last path segment of its tus URL;
                     write it with "=": an id may start with "-")
  --timeout-ms N     give up after N ms without uploadComplete/uploadError (default 30000)
  --help             show this text`

const FINAL_EVENTS = new Set(['uploadComplete', 'uploadError'])
const ACK_TIMEOUT_MS = 5000

// Write, then exit once the text is flushed (stdout/stderr may be asynchronous pipes).
function finish(stream, text, code) {
  stream.write(`${text}\n`, () => process.exit(code))
}

function line(event, data) {
  return JSON.stringify({ event, data })
}

function parseCommandLine(argv) {
  const { values: args } = parseArgs({
    args: argv,
    options: {
      url: { type: 'string' },
      'upload-id': { type: 'string' },
      'timeout-ms': { type: 'string', default: '30000' },
      help: { type: 'boolean' },
    },
  })
  if (args.help) return { help: true }
  if (!args.url || !args['upload-id']) throw new Error('--url and --upload-id are required')
  const timeoutMs = Number(args['timeout-ms'])
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs < 1) {
    throw new Error(`--timeout-ms needs a positive integer, got ${JSON.stringify(args['timeout-ms'])}`)
  }
  return { url: args.url, uploadId: args['upload-id'], timeoutMs }
}

function watch({ url, uploadId, timeoutMs }) {
  let done = false
  const end = (stream, text, code) => {
    if (done) return
    done = true
    clearTimeout(timer)
    socket.disconnect()
    finish(stream, text, code)
  }
  const timer = setTimeout(
    () => end(process.stderr, `watch-upload: no uploadComplete or uploadError within ${timeoutMs} ms`, 1),
    timeoutMs,
  )
  const socket = io(url, { transports: ['websocket'], reconnection: false, timeout: timeoutMs })

  socket.onAny((event, ...args) => {
    if (done) return
    const data = args.length === 1 ? args[0] : args
    if (FINAL_EVENTS.has(event)) end(process.stdout, line(event, data), 0)
    else process.stdout.write(`${line(event, data)}\n`)
  })
  socket.on('connect', async () => {
    let ack
    try {
      ack = await socket.timeout(ACK_TIMEOUT_MS).emitWithAck('joinUploadRoom', uploadId)
    } catch (error) {
      end(process.stderr, `watch-upload: no join acknowledgement: ${error.message}`, 1)
      return
    }
    if (done) return
    process.stdout.write(`${line('joinUploadRoom', ack)}\n`)
    if (!ack || ack.ok !== true) end(process.stderr, `watch-upload: join refused: ${JSON.stringify(ack)}`, 1)
  })
  socket.on('connect_error', (error) => end(process.stderr, `watch-upload: cannot connect to ${url}: ${error.message}`, 1))
  socket.on('disconnect', (reason) => end(process.stderr, `watch-upload: disconnected: ${reason}`, 1))
}

let options
try {
  options = parseCommandLine(process.argv.slice(2))
} catch (error) {
  finish(process.stderr, `watch-upload: ${error.message}\n\n${USAGE}`, 2)
}
if (options?.help) finish(process.stdout, USAGE, 0)
else if (options) watch(options)
