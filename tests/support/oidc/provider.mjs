// A real OpenID provider for duka's tests: panva's oidc-provider (OpenID certified) on a
// random loopback port, with a confidential client `duka` (PKCE required), any login
// accepted by the development login form, and a few test-only endpoints under /test:
//   POST /test/mint   {claims, key?, attack?} -> {token}: a JWT signed with a chosen key
//   POST /test/rotate -> {kid}: a new signing key for minted tokens; the old one leaves the JWKS
//   GET  /test/stats  -> {jwks}: how often the JWKS was fetched
// With OIDC_JWKS_MAX_AGE=N the JWKS says `Cache-Control: public, max-age=N`.
// With OIDC_BEARER_ONLY=1 its discovery document is cut down to what Firebase's
// securetoken.google.com publishes: no authorization or token endpoint, API tokens only.
// Prints one JSON line {"issuer": ...} on stdout when ready; exits when stdin closes, so a
// test process that dies does not leave it behind.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import { SignJWT, exportJWK, exportSPKI, generateKeyPair } from 'jose';

const CLIENT_ID = process.env.OIDC_CLIENT_ID || 'duka';
const CLIENT_SECRET = process.env.OIDC_CLIENT_SECRET || 'duka-test-secret';

async function newKey(kid) {
  const { publicKey, privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
  const { d, p, q, dp, dq, qi, ...pub } = jwk;
  return { kid, publicKey, privateKey, jwk, pub };
}

const idTokenKey = await newKey(`provider-${crypto.randomUUID()}`);
let mintKey = await newKey(`mint-${crypto.randomUUID()}`);
// Made when first asked for: a key known to nobody (its kid is not in the JWKS), and
// another key that claims the current minting key's kid (a forged signature).
const extraKeys = {};
async function extraKey(which) {
  const kid = which === 'stranger' ? `stranger-${crypto.randomUUID()}` : mintKey.kid;
  if (extraKeys[which]?.forKid !== mintKey.kid) {
    extraKeys[which] = { forKid: mintKey.kid, key: await newKey(kid) };
  }
  return extraKeys[which].key;
}
let jwksFetches = 0;

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// A login names the account and, after `~`, what its tokens say besides: `unverified`
// (email_verified: false), `roles=a,b` (a `roles` array claim), `role=a` (the same claim
// as a string). E.g. `ann~unverified~roles=admin`.
function accountFor(id) {
  const [base, ...flags] = id.split('~');
  const email = base.includes('@') ? base : `${base}@example.com`;
  const claims = { sub: id, email, email_verified: !flags.includes('unverified'), name: `Test ${base}` };
  for (const flag of flags) {
    if (flag.startsWith('roles=')) claims.roles = flag.slice('roles='.length).split(',');
    if (flag.startsWith('role=')) claims.roles = flag.slice('role='.length);
  }
  return {
    accountId: id,
    async claims() {
      return claims;
    },
  };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    // Native clients may use any loopback port, so the test server's random port fits.
    application_type: 'native',
    redirect_uris: ['http://127.0.0.1/auth/callback'],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  jwks: { keys: [idTokenKey.jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'roles'] },
  // Put the scope's claims into the ID token, which is what duka reads.
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => accountFor(id),
});
provider.on('server_error', (ctx, err) => console.error('provider server_error', err));

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function mint({ claims = {}, key = 'current', attack = null }) {
  if (attack === 'hs256-public') {
    // The classic confusion attack: HMAC keyed with the issuer's public key (PEM).
    const pem = await exportSPKI(mintKey.publicKey);
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT', kid: mintKey.kid })
      .sign(new TextEncoder().encode(pem));
  }
  const signer = key === 'stranger' || key === 'impostor'
    ? await extraKey(key)
    : { current: mintKey, provider: idTokenKey }[key];
  if (!signer) throw new Error(`unknown key ${key}`);
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', typ: 'JWT', kid: signer.kid })
    .sign(signer.privateKey);
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  try {
    const path = req.url.split('?')[0];
    if (process.env.OIDC_BEARER_ONLY && path === '/.well-known/openid-configuration') {
      return send(res, 200, {
        issuer,
        jwks_uri: `${issuer}/jwks`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['RS256'],
      });
    }
    if (req.method === 'GET' && path === '/jwks') {
      jwksFetches += 1;
      // OIDC_JWKS_MAX_AGE=N: say how long the set may be cached, as real issuers do.
      if (process.env.OIDC_JWKS_MAX_AGE) {
        res.setHeader('cache-control', `public, max-age=${process.env.OIDC_JWKS_MAX_AGE}`);
      }
      return send(res, 200, { keys: [idTokenKey.pub, mintKey.pub] });
    }
    if (req.method === 'POST' && path === '/test/mint') {
      return send(res, 200, { token: await mint(await readJson(req)) });
    }
    if (req.method === 'POST' && path === '/test/rotate') {
      mintKey = await newKey(`mint-${crypto.randomUUID()}`);
      return send(res, 200, { kid: mintKey.kid });
    }
    if (req.method === 'GET' && path === '/test/stats') {
      return send(res, 200, { jwks: jwksFetches });
    }
    return callback(req, res);
  } catch (err) {
    console.error(err);
    return send(res, 500, { error: String(err) });
  }
});

// The harness reads only the first line of stdout and then closes it: later output goes
// to stderr, and a write to the closed pipe must not bring the provider down.
process.stdout.on('error', () => {});
console.log = console.info = console.error;
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.stdout.write(`${JSON.stringify({ issuer, client_id: CLIENT_ID, client_secret: CLIENT_SECRET })}\n`);
