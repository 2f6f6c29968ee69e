// medhub development OpenID Connect provider.
//
// A real, certified OpenID Provider (the npm package `oidc-provider`) with a static account
// store, for the demo and the tests. It is not a mock: discovery, JWKS, authorization code
// flow with PKCE, RS256 id_tokens, userinfo, refresh tokens and RP-initiated logout are the
// library's own implementation. Only the login and consent pages are ours.
//
// Usage: node server.mjs CONFIG.json   (SIGHUP reloads the accounts from it)
// CONFIG.json (written by medhub.idp.DevIdentityProvider):
//   { "issuer": "http://127.0.0.1:9000", "host": "127.0.0.1", "port": 9000,
//     "keys_file": ".../idp-keys.json", "cookie_secret": "...",
//     "ttl": { "AccessToken": 3600, "IdToken": 3600, "RefreshToken": 1209600 },
//     "accounts": [ { "username", "password", "name", "email", "groups": [...] } ],
//     "clients": [ { "client_id", "client_secret", "redirect_uris", "post_logout_redirect_uris" } ] }

import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.username, a]));
// SIGHUP: read the accounts again, as a directory's change of group membership reaches a real
// IdP; the hub sees the new groups at its next refresh of the user's tokens.
process.on('SIGHUP', () => {
  accounts.clear();
  for (const a of JSON.parse(readFileSync(process.argv[2], 'utf8')).accounts) accounts.set(a.username, a);
});

// Signing keys persist across restarts so that issued tokens stay verifiable.
function signingKeys(path) {
  if (existsSync(path)) return JSON.parse(readFileSync(path, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
  const keys = { keys: [jwk] };
  writeFileSync(path, JSON.stringify(keys), { mode: 0o600 });
  return keys;
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

function passwordMatches(account, password) {
  const a = Buffer.from(account.password, 'utf8');
  const b = Buffer.from(password ?? '', 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
    id_token_signed_response_alg: 'RS256',
    ...c,
  })),
  jwks: signingKeys(config.keys_file),
  cookies: { keys: [config.cookie_secret] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  // Put the scope's claims (groups among them) into the id_token as well as userinfo.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
  },
  // Confidential clients allowed the refresh_token grant always get a refresh token.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: config.ttl?.AccessToken ?? 3600,
    AuthorizationCode: 120,
    IdToken: config.ttl?.IdToken ?? 3600,
    RefreshToken: config.ttl?.RefreshToken ?? 14 * 24 * 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const account = accounts.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          preferred_username: account.username,
          name: account.name ?? account.username,
          email: account.email,
          email_verified: Boolean(account.email),
          groups: account.groups ?? [],
        };
      },
    };
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<p class="error">${escapeHtml(out.error)}: ${escapeHtml(out.error_description ?? '')}</p>`);
  },
});
provider.proxy = true;

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:4em auto}label{display:block;margin:.6em 0}
input{width:100%;padding:.3em}button{margin-top:1em;padding:.4em 1.2em}.error{color:#b00}</style></head>
<body><h1>${escapeHtml(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, clientId, error, username) {
  return page('medhub development identity provider', `
<p>Sign in to <b>${escapeHtml(clientId)}</b>.</p>
${error ? `<p class="error" id="error">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${uid}/login" autocomplete="off">
  <label>Username <input name="username" id="username" value="${escapeHtml(username ?? '')}" autofocus></label>
  <label>Password <input name="password" id="password" type="password"></label>
  <button type="submit" id="sign-in">Sign in</button>
</form>`);
}

function consentForm(uid, clientId, scopes) {
  const items = scopes.map((s) => `<li>${escapeHtml(s)}</li>`).join('');
  return page('Authorize access', `
<p><b>${escapeHtml(clientId)}</b> asks for:</p><ul>${items}</ul>
<form method="post" action="/interaction/${uid}/confirm"><button type="submit" id="authorize">Authorize</button></form>
<form method="post" action="/interaction/${uid}/abort"><button type="submit" id="deny">Deny</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, page('Sign-in error', '<p class="error">Interaction mismatch.</p>'));
  const { prompt, params } = details;

  if (req.method === 'GET') {
    if (prompt.name === 'login') return send(res, 200, loginForm(uid, params.client_id));
    return send(res, 200, consentForm(uid, params.client_id, String(params.scope).split(' ')));
  }
  if (action === 'login') {
    const form = await readForm(req);
    const account = accounts.get(form.username);
    if (!account || !passwordMatches(account, form.password)) {
      console.log(`login failed for ${JSON.stringify(form.username)}`);
      return send(res, 401, loginForm(uid, params.client_id, 'Invalid username or password.', form.username));
    }
    console.log(`login ok for ${account.username}`);
    return provider.interactionFinished(req, res, { login: { accountId: account.username } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    const { accountId } = details.session;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'The user denied access.' }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, page('Not found', ''));
}

const oidc = provider.callback();
const server = createServer(async (req, res) => {
  const m = req.url.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?\/?(?:\?.*)?$/);
  if (!m) return oidc(req, res);
  try {
    await interaction(req, res, m[1], m[2]);
  } catch (err) {
    console.error(err);
    send(res, 400, page('Sign-in error', `<p class="error">${escapeHtml(err.message)}. Start the sign-in again from medhub.</p>`));
  }
});

server.listen(config.port, config.host, () => {
  console.log(`medhub dev IdP listening on ${config.issuer}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
