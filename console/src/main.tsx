// Strata console: the app shell (sign-in, navigation, theme) and the screens' routes.
import { render } from "preact";
import type { ComponentChildren } from "preact";
import { useEffect, useErrorBoundary, useState } from "preact/hooks";
import { get, setToken, token, whenUnauthorized } from "./api";
import { navigate, useRoute } from "./router";
import { Link } from "./ui";
import { SignIn } from "./screens/signin";
import { Overview } from "./screens/overview";
import { Catalog, TablePage } from "./screens/catalog";
import { Sql } from "./screens/sql";
import { Pipelines, PipelinePage, ModelPage } from "./screens/pipelines";
import { Quality } from "./screens/quality";
import { Lineage } from "./screens/lineage";
import { Ingestion } from "./screens/ingestion";
import { Access } from "./screens/access";
import "./style.css";

const SCREENS: [string, string][] = [
  ["", "Overview"],
  ["catalog", "Catalog"],
  ["sql", "SQL"],
  ["pipelines", "Pipelines"],
  ["quality", "Quality"],
  ["lineage", "Lineage"],
  ["ingestion", "Ingestion"],
  ["access", "Access"],
];

/** Who the token names (read from its payload for display only; the server decides). */
function subject(t: string): string {
  try {
    const part = t.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part));
    return String(claims.sub ?? "");
  } catch {
    return "";
  }
}

function useTheme(): [string, () => void] {
  const [theme, setTheme] = useState(localStorage.getItem("strata.theme") ?? "auto");
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem("strata.theme", theme);
  }, [theme]);
  const next = () => setTheme(theme === "auto" ? "dark" : theme === "dark" ? "light" : "auto");
  return [theme, next];
}

/** Whether the token holds the admin role: only admins may read the grants. */
function useAdmin(signedIn: boolean): boolean {
  const [admin, setAdmin] = useState(false);
  useEffect(() => {
    if (!signedIn) return;
    get("/api/v1/grants").then(
      () => setAdmin(true),
      () => setAdmin(false),
    );
  }, [signedIn]);
  return admin;
}

/** A screen that fails to render says so (and how to go on) instead of going blank. */
function Boundary({ children }: { children: ComponentChildren }) {
  const [error, reset] = useErrorBoundary();
  if (error) {
    return (
      <section role="alert">
        <h1>This screen failed</h1>
        <p class="error">{String((error as Error).message ?? error)}</p>
        <button type="button" onClick={reset}>
          Try again
        </button>
      </section>
    );
  }
  return <>{children}</>;
}

function App() {
  const [signedIn, setSignedIn] = useState(token() !== null);
  const [theme, nextTheme] = useTheme();
  const route = useRoute();
  const admin = useAdmin(signedIn);
  useEffect(() => {
    whenUnauthorized(() => {
      setToken(null);
      setSignedIn(false);
    });
  }, []);
  if (!signedIn) {
    return <SignIn onSignedIn={() => setSignedIn(true)} />;
  }
  const [screen = "", ...rest] = route;
  const page = (() => {
    switch (screen) {
      case "":
        return <Overview />;
      case "catalog":
        return rest.length >= 2 ? <TablePage layer={rest[0]} name={rest[1]} admin={admin} /> : <Catalog />;
      case "sql":
        return <Sql />;
      case "pipelines":
        // Models as `models/<layer>/<name>`: a dot would read as a file extension.
        if (rest.length >= 4 && rest[1] === "models") return <ModelPage pipeline={rest[0]} model={`${rest[2]}.${rest[3]}`} />;
        return rest.length >= 1 ? <PipelinePage name={rest[0]} /> : <Pipelines />;
      case "quality":
        return <Quality />;
      case "lineage":
        return <Lineage table={rest.length >= 2 ? `${rest[0]}.${rest[1]}` : null} />;
      case "ingestion":
        return <Ingestion admin={admin} />;
      case "access":
        return <Access admin={admin} />;
      default:
        return (
          <section>
            <h1>Not found</h1>
            <p>
              The console has no screen at <code>{route.join("/")}</code>. <Link to="">Overview</Link>
            </p>
          </section>
        );
    }
  })();
  const t = token() ?? "";
  return (
    <div class="shell">
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <span class="brand">Strata</span>
        <nav aria-label="Screens">
          <ul>
            {SCREENS.map(([to, label]) => (
              <li key={to}>
                <Link to={to} current={screen === to}>
                  {label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <span class="who" title="The token's subject">
          {subject(t)}
          {admin ? " (admin)" : ""}
        </span>
        <button type="button" class="ghost" onClick={nextTheme} aria-label={`Theme: ${theme}`}>
          Theme: {theme}
        </button>
        <button
          type="button"
          class="ghost"
          onClick={() => {
            setToken(null);
            setSignedIn(false);
            navigate("", true);
          }}
        >
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        <Boundary key={route.join("/")}>{page}</Boundary>
      </main>
    </div>
  );
}

const root = document.getElementById("app");
if (root) render(<App />, root);
