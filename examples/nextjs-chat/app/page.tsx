import { Chat } from './chat';

export default function Home() {
  return (
    <main>
      <h1>Sluice chat</h1>
      <p className="lede">
        Answers stream through Sluice. Reload in the middle of one, open a second tab, or press
        Stop: the answer lives in Sluice, not in this page.
      </p>
      <Chat />
    </main>
  );
}
