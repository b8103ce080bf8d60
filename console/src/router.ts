// Client-side routes under the console's base path (the server's `<base href>`): the
// server answers every extensionless path under it with index.html.
import { useEffect, useState } from "preact/hooks";

export function base(): string {
  const b = new URL(document.baseURI).pathname;
  return b.endsWith("/") ? b : `${b}/`;
}

/** The route: the path below the base, without leading or trailing slashes. */
export function current(): string {
  const p = window.location.pathname;
  const b = base();
  const rest = p.startsWith(b) ? p.slice(b.length) : p === b.slice(0, -1) ? "" : p.replace(/^\//, "");
  return rest.replace(/\/+$/, "");
}

const listeners = new Set<() => void>();

export function navigate(to: string, replace = false) {
  const target = base() + to.replace(/^\//, "");
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  listeners.forEach((l) => l());
  window.scrollTo(0, 0);
}

window.addEventListener("popstate", () => listeners.forEach((l) => l()));

export function useRoute(): string[] {
  const [route, setRoute] = useState(current());
  useEffect(() => {
    const l = () => setRoute(current());
    listeners.add(l);
    return () => {
      listeners.delete(l);
    };
  }, []);
  return route === "" ? [] : route.split("/").map(decodeURIComponent);
}

/** An in-app link: a real href (open in new tab works) that navigates without a reload. */
export function href(to: string): string {
  return base() + to.replace(/^\//, "");
}

export function follow(e: MouseEvent, to: string) {
  if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(to);
}
