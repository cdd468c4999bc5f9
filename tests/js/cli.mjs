// What the test clients' command lines share: messages, number checks, the main block.

// Write, then exit once the text is flushed (stdout/stderr may be asynchronous pipes).
export function finish(stream, text, code) {
  stream.write(`${text}\n`, () => process.exit(code))
}

export function positiveInt(name, text) {
  const n = Number(text)
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} needs a positive integer, got ${JSON.stringify(text)}`)
  return n
}

// "0,200,500" -> [0, 200, 500]; "none" -> null (no retries).
export function retryDelays(text) {
  const delays = text === 'none' ? null : text.split(',').map(Number)
  if (delays?.some((d) => !Number.isFinite(d) || d < 0)) {
    throw new Error(`bad --retry-delays ${JSON.stringify(text)}`)
  }
  return delays
}

// Parse argv, print usage or errors as one line, and run the upload.
export function main(name, usage, parseCommandLine, upload) {
  let cli
  try {
    cli = parseCommandLine(process.argv.slice(2))
  } catch (err) {
    finish(process.stderr, `${name}: ${err.message}\n\n${usage}`, 1)
    return
  }
  if (cli.help) {
    finish(process.stdout, usage, 0)
    return
  }
  try {
    upload(cli)
  } catch (err) {
    finish(process.stderr, `${name}: ${err.message}`, 1)
  }
}
