#!/usr/bin/env node
// Upload one file with the real, unmodified tus-js-client speaking the IETF draft
// "Resumable Uploads for HTTP" instead of tus: `protocol: 'ietf-draft-03'` sends
// Upload-Draft-Interop-Version 5, `'ietf-draft-05'` sends 6. Used by
// tests/protocol/test_ietf_draft.py; run with --help for the options.
//
// On success: one JSON line {"url": ..., "bytes": N} on stdout, exit 0.
// On error: the error on stderr, exit 1. With --verbose, the upload URL and each
// acknowledged append (`chunk-complete OFFSET/SIZE`) also go to stderr.
//
// The file is read into a Buffer on purpose. tus-js-client 4.3.1's Node file source
// computes `done` for a slice as `sliceLength >= fileSize`, so a resumed append (or any
// chunk but a whole-file one) read from an fs stream never says `Upload-Complete: ?1` and
// the draft upload is never completed; its Buffer source gets `done` right.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import * as tus from 'tus-js-client'

import { finish, main, positiveInt, retryDelays } from './cli.mjs'

const PROTOCOLS = ['ietf-draft-03', 'ietf-draft-05']

const USAGE = `usage: node ietf-upload.mjs --endpoint URL --file PATH --protocol NAME [options]

  --endpoint URL         creation endpoint, e.g. http://127.0.0.1:3000/files/
  --file PATH            the file to upload (read into memory)
  --protocol NAME        ${PROTOCOLS.join(' or ')}
  --chunk-size BYTES     bytes per append (PATCH) request (default: the rest in one)
  --retry-delays LIST    retry delays in ms, e.g. 0,200,500; "none" disables retrying
  --verbose              log the upload URL and each acknowledged append to stderr
  --help                 show this text`

// Turn the command line into tus-js-client options; throws on a bad command line.
function parseCommandLine(argv) {
  const { values: args } = parseArgs({
    args: argv,
    options: {
      endpoint: { type: 'string' },
      file: { type: 'string' },
      protocol: { type: 'string' },
      'chunk-size': { type: 'string' },
      'retry-delays': { type: 'string' },
      verbose: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  })
  if (args.help) return { help: true }
  if (!args.endpoint || !args.file) throw new Error('--endpoint and --file are required')
  if (!PROTOCOLS.includes(args.protocol)) throw new Error(`--protocol must be ${PROTOCOLS.join(' or ')}`)

  const options = {
    endpoint: args.endpoint,
    protocol: args.protocol,
    metadata: { filename: path.basename(args.file) },
  }
  if (args['chunk-size'] !== undefined) options.chunkSize = positiveInt('chunk-size', args['chunk-size'])
  if (args['retry-delays'] !== undefined) options.retryDelays = retryDelays(args['retry-delays'])
  return { file: args.file, verbose: Boolean(args.verbose), options }
}

function upload({ file, verbose, options }) {
  const data = fs.readFileSync(file)
  const log = verbose ? (line) => process.stderr.write(`${line}\n`) : () => {}
  const up = new tus.Upload(data, {
    ...options,
    onUploadUrlAvailable: () => log(`upload-url ${up.url}`),
    onChunkComplete: (_chunk, accepted, total) => log(`chunk-complete ${accepted}/${total}`),
    onSuccess: () => finish(process.stdout, JSON.stringify({ url: up.url, bytes: data.length }), 0),
    onError: (err) => finish(process.stderr, `ietf-upload: ${err.message ?? err}`, 1),
  })
  up.start()
}

main('ietf-upload', USAGE, parseCommandLine, upload)
