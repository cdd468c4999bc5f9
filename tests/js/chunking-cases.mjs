#!/usr/bin/env node
// Runs the page's chunk-size rule (static/chunking.js, an ES module the page imports) on
// cases read from stdin, for tests/protocol/test_throughput.py.
//
// stdin: [[bytes, seconds, current], ...]; stdout: {"constants": {...}, "next": [size, ...]}
import fs from 'node:fs'

const source = fs.readFileSync(new URL('../../static/chunking.js', import.meta.url))
// A data: URL is a module whatever package.json is nearest to static/ (there is none).
const chunking = await import(`data:text/javascript;base64,${source.toString('base64')}`)

const cases = JSON.parse(fs.readFileSync(0, 'utf8'))
const { nextChunkSize, ...constants } = chunking
const next = cases.map(([bytes, seconds, current]) => nextChunkSize(bytes, seconds, current))
process.stdout.write(`${JSON.stringify({ constants, next })}\n`)
