#!/usr/bin/env node
// Upload one file with the real, unmodified tus-js-client (its Node build).
// Used by tests/system/test_real_clients.py; run with --help for the options.
//
// On success: one JSON line {"url": ..., "bytes": N} on stdout, exit 0.
// On error: the error on stderr, exit 1. With --verbose, progress also goes to stderr.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import * as tus from 'tus-js-client'

import { finish, main, positiveInt, retryDelays } from './cli.mjs'

const USAGE = `usage: node tus-upload.mjs --endpoint URL --file PATH [options]

  --endpoint URL         tus creation endpoint, e.g. http://127.0.0.1:3000/files/
  --file PATH            the file to upload
  --chunk-size BYTES     bytes per PATCH request (default: the whole file in one)
  --parallel N           parallelUploads: N partial uploads, then a final (concatenation)
  --metadata k=v         an Upload-Metadata entry; repeatable (default: filename=<basename>)
  --retry-delays LIST    retry delays in ms, e.g. 0,200,500; "none" disables retrying
  --verbose              log the upload URL and each acknowledged chunk to stderr
  --help                 show this text`

// Turn the command line into tus-js-client options; throws on a bad command line.
function parseCommandLine(argv) {
  const { values: args } = parseArgs({
    args: argv,
    options: {
      endpoint: { type: 'string' },
      file: { type: 'string' },
      'chunk-size': { type: 'string' },
      parallel: { type: 'string' },
      metadata: { type: 'string', multiple: true },
      'retry-delays': { type: 'string' },
      verbose: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  })
  if (args.help) return { help: true }
  if (!args.endpoint || !args.file) throw new Error('--endpoint and --file are required')

  const metadata = { filename: path.basename(args.file) }
  for (const entry of args.metadata ?? []) {
    const eq = entry.indexOf('=')
    if (eq < 1) throw new Error(`--metadata needs k=v, got ${JSON.stringify(entry)}`)
    metadata[entry.slice(0, eq)] = entry.slice(eq + 1)
  }
  const options = { endpoint: args.endpoint, metadata }
  if (args['chunk-size'] !== undefined) options.chunkSize = positiveInt('chunk-size', args['chunk-size'])
  if (args.parallel !== undefined) options.parallelUploads = positiveInt('parallel', args.parallel)
  if (args['retry-delays'] !== undefined) options.retryDelays = retryDelays(args['retry-delays'])
  return { file: args.file, verbose: Boolean(args.verbose), options }
}

function upload({ file, verbose, options }) {
  const size = fs.statSync(file).size
  const log = verbose ? (line) => process.stderr.write(`${line}\n`) : () => {}
  // A ReadStream that has a path lets tus-js-client stat the file (so no `uploadSize`) and
  // re-read any slice of it: for retries and for the parts of a parallel upload.
  const up = new tus.Upload(fs.createReadStream(file), {
    ...options,
    onUploadUrlAvailable: () => log(`upload-url ${up.url}`),
    onChunkComplete: (_chunk, accepted, total) => log(`chunk-complete ${accepted}/${total}`),
    onSuccess: () => finish(process.stdout, JSON.stringify({ url: up.url, bytes: size }), 0),
    onError: (err) => finish(process.stderr, `tus-upload: ${err.message ?? err}`, 1),
  })
  up.start()
}

main('tus-upload', USAGE, parseCommandLine, upload)
