// The access token of a server with `auth.bearer_tokens`. The page itself is public; the token
// comes from the address's fragment (/#token=...: browsers never send a fragment to a server)
// or from the labelled field of the access panel, and is kept in sessionStorage: for this tab
// only, gone when it closes. Every tus and REST request carries it (`authHeaders`, shared with
// each tus.Upload: tus-js-client reads its `headers` on every request, so a new token applies
// to uploads already running), the Socket.IO connection sends it in its `auth` payload, and
// downloads from the page fetch with it.

const KEY = "formforge.token";
const $ = (id) => document.getElementById(id);

export const authHeaders = {};

const MESSAGES = {
  // The page's own path: under a prefix (/uploads/) too.
  missing:
    "This server needs an access token. Enter it below, or open this page as " +
    `${location.pathname}#token=YOUR-TOKEN.`,
  refused: "The server refused this access token. Check it and enter it again.",
  unreachable: "Could not reach the server to check the access token.",
};

function readStored() {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null; // storage disabled: the token lasts as long as the page
  }
}

let token = readStored();

export function currentToken() {
  return token;
}

// What the Socket.IO client sends when it connects (called anew on every reconnection).
export function socketAuth(callback) {
  callback(token ? { token } : {});
}

function saveToken(value) {
  token = value.trim() || null;
  try {
    if (token) sessionStorage.setItem(KEY, token);
    else sessionStorage.removeItem(KEY);
  } catch {
    // kept in memory only
  }
  applyToken();
}

function applyToken() {
  if (token) authHeaders.Authorization = `Bearer ${token}`;
  else delete authHeaders.Authorization;
}

// /#token=...: taken once, then removed from the address bar and its history entry, so the
// token is not shared by copying the address or bookmarking it.
function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const given = fragment.get("token");
  if (given === null) return false;
  fragment.delete("token");
  const rest = fragment.toString();
  const address = `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`;
  history.replaceState(history.state, "", address);
  saveToken(given);
  return true;
}

// Shows the panel with what is wrong ("missing", "refused", "unreachable"), or hides it (null).
export function showAccessProblem(problem) {
  $("access").hidden = problem === null;
  $("access-message").textContent = problem ? MESSAGES[problem] : "";
  $("access").dataset.problem = problem || "";
}

// Asks the server whether the current token (or none) opens the tus endpoint: a tus OPTIONS
// needs a token whenever tokens are configured, and changes nothing.
export async function checkAccess(endpoint) {
  let status = 0;
  try {
    const answer = await fetch(endpoint, {
      method: "OPTIONS",
      headers: { "Tus-Resumable": "1.0.0", ...authHeaders },
      cache: "no-store",
    });
    status = answer.status;
  } catch {
    status = 0;
  }
  const problem =
    status === 401 ? (token ? "refused" : "missing") : status === 0 ? "unreachable" : null;
  showAccessProblem(problem);
  return problem === null;
}

// A plain link carries no token. With one, a click fetches the file with it and hands the
// bytes to the browser to save (it keeps a big blob on disk, not in memory). Resolves to an
// error message, or null.
export async function downloadWithToken(event, link) {
  if (!token) return null; // no token: the link is an ordinary link
  event.preventDefault();
  try {
    const answer = await fetch(link.href, { headers: authHeaders });
    if (answer.status === 401) {
      showAccessProblem("refused");
      return "The server refused the access token for this download.";
    }
    if (!answer.ok) return `The download failed: ${answer.status} ${answer.statusText}.`;
    const saved = URL.createObjectURL(await answer.blob());
    const save = Object.assign(document.createElement("a"), { href: saved, download: link.text });
    save.click();
    setTimeout(() => URL.revokeObjectURL(saved), 60000); // the browser has started saving it
    return null;
  } catch (error) {
    return `The download failed: ${error.message}.`;
  }
}

// `onAccepted` runs each time a new token (typed in, or a new /#token=) is accepted.
export function initAccess(endpoint, onAccepted) {
  applyToken();
  takeTokenFromFragment();
  const recheck = async () => {
    if (await checkAccess(endpoint)) onAccepted();
  };
  $("access-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveToken($("access-token").value);
    $("access-token").value = "";
    recheck();
  });
  window.addEventListener("hashchange", () => {
    if (takeTokenFromFragment()) recheck();
  });
  return checkAccess(endpoint);
}
