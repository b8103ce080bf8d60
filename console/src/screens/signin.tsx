// Sign in: paste a JWT. It is kept in sessionStorage (this tab only) and sent as a bearer
// token to the REST API; nothing is stored in cookies.
import { useState } from "preact/hooks";
import { get, setToken } from "../api";
import { ErrorNote } from "../ui";

function devMode(): boolean {
  return document.querySelector('meta[name="strata-auth"]')?.getAttribute("content") === "dev";
}

export function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setToken(value.trim());
    try {
      // Any authenticated call proves the token; the catalog is one every principal may list.
      await get("/api/v1/tables");
      onSignedIn();
    } catch (err) {
      setToken(null);
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin" id="main">
      <h1>Strata console</h1>
      <form onSubmit={submit}>
        <label for="token">Access token (JWT)</label>
        <textarea
          id="token"
          name="token"
          rows={5}
          autocomplete="off"
          spellcheck={false}
          value={value}
          onInput={(e) => setValue((e.target as HTMLTextAreaElement).value)}
          required
        />
        <button type="submit" disabled={busy || value.trim() === ""}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        <ErrorNote error={error} />
      </form>
      <p class="muted">
        The token stays in this browser tab (session storage) and is sent only to this server's API. Every
        screen shows what the token's grants, row filters and masks allow.
      </p>
      {devMode() ? (
        <div class="hint">
          <h2>Dev mode</h2>
          <p>
            This server runs with <code>auth.mode = "dev"</code>: it printed an admin token when it started (the
            line after <code>admin token</code> in its output). Mint another with
          </p>
          <pre>strata token --sub alice --role analyst --ttl 8h</pre>
          <p>run with the same configuration (it signs with the secret in the data directory).</p>
        </div>
      ) : (
        <p class="muted">Ask your identity provider for a token this server's <code>[auth]</code> accepts.</p>
      )}
    </main>
  );
}
