/**
 * Light and dark: the system's choice (`prefers-color-scheme`) unless the user picked one,
 * shared by both pages. The CSS follows the media query by itself; an explicit choice sets
 * `data-theme` on the root element.
 */
import { useCallback, useEffect, useState } from 'react';

/** The user's choice. */
export type ThemeChoice = 'system' | 'light' | 'dark';

const KEY = 'sluice.theme';

function stored(): ThemeChoice {
  try {
    const value = localStorage.getItem(KEY);
    return value === 'light' || value === 'dark' ? value : 'system';
  } catch {
    return 'system';
  }
}

function systemDark(): boolean {
  return typeof matchMedia === 'function' && matchMedia('(prefers-color-scheme: dark)').matches;
}

function apply(choice: ThemeChoice): void {
  const root = document.documentElement;
  if (choice === 'system') root.removeAttribute('data-theme');
  else root.setAttribute('data-theme', choice);
}

/** The theme choice as state, applied to the page; `toggle` flips what is shown. */
export function useTheme(): { choice: ThemeChoice; dark: boolean; toggle: () => void } {
  const [choice, setChoice] = useState<ThemeChoice>(stored);
  const [system, setSystem] = useState(systemDark);

  useEffect(() => {
    apply(choice);
  }, [choice]);

  useEffect(() => {
    if (typeof matchMedia !== 'function') return undefined;
    const query = matchMedia('(prefers-color-scheme: dark)');
    const listener = () => setSystem(query.matches);
    query.addEventListener('change', listener);
    const onStorage = (e: StorageEvent) => {
      if (e.key === KEY) setChoice(stored());
    };
    addEventListener('storage', onStorage);
    return () => {
      query.removeEventListener('change', listener);
      removeEventListener('storage', onStorage);
    };
  }, []);

  const dark = choice === 'dark' || (choice === 'system' && system);
  const toggle = useCallback(() => {
    // Flip what is shown; picking what the system shows anyway goes back to following it.
    const next: ThemeChoice = dark ? 'light' : 'dark';
    const value: ThemeChoice = (next === 'dark') === systemDark() ? 'system' : next;
    try {
      if (value === 'system') localStorage.removeItem(KEY);
      else localStorage.setItem(KEY, value);
    } catch {
      // storage unavailable: the choice lasts for this page
    }
    setChoice(value);
  }, [dark]);

  return { choice, dark, toggle };
}
