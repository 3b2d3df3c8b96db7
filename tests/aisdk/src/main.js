// A minimal chat page on the AI SDK's useChat, pointed at Sluice: what an app would write.
//
// The page URL carries the Sluice base URL (?sluice=http://host:port), optionally another
// node to resume and stop on (?resume=http://host:port), and the chat id
// (?chat=...), so a reload names the same chat and `resume: true` reattaches to its running
// answer (GET {sluice}/api/chat/{id}/stream). useChat keeps messages in memory only, so the
// page keeps them in localStorage (as an app keeps them in its database) and hands them back
// to useChat after a reload. Stop asks Sluice to stop the answer (POST /api/chat/{id}/stop:
// the upstream is cancelled), then stops the hook's own request.

import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { createElement as h, useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';

const params = new URLSearchParams(location.search);
const SLUICE = (params.get('sluice') ?? location.origin).replace(/\/+$/, '');
const CHAT_ID = params.get('chat') ?? 'default-chat';
// Where a reload resumes and Stop stops (?resume=…): another node of the same cluster, say;
// by default the same server.
const RESUME = (params.get('resume') ?? SLUICE).replace(/\/+$/, '');
const STORAGE_KEY = `sluice-aisdk-chat:${CHAT_ID}`;

function storedMessages() {
  try {
    return JSON.parse(localStorage.getItem(STORAGE_KEY) ?? '[]');
  } catch {
    return [];
  }
}

function textOf(message) {
  return message.parts
    .filter((part) => part.type === 'text')
    .map((part) => part.text)
    .join('');
}

function App() {
  const transport = useMemo(
    () =>
      new DefaultChatTransport({
        api: `${SLUICE}/api/chat`,
        body: { model: 'scripted' },
        prepareReconnectToStreamRequest: ({ id }) => ({ api: `${RESUME}/api/chat/${encodeURIComponent(id)}/stream` }),
      }),
    [],
  );
  const initial = useMemo(storedMessages, []);
  const { messages, sendMessage, stop, status, error } = useChat({
    id: CHAT_ID,
    messages: initial,
    resume: true,
    transport,
  });
  const [input, setInput] = useState('');

  useEffect(() => {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(messages));
  }, [messages]);

  async function onStop() {
    try {
      await fetch(`${RESUME}/api/chat/${encodeURIComponent(CHAT_ID)}/stop`, { method: 'POST' });
    } finally {
      await stop();
    }
  }

  function onSubmit(event) {
    event.preventDefault();
    const text = input.trim();
    if (!text) return;
    setInput('');
    sendMessage({ text });
  }

  return h(
    'main',
    { 'data-testid': 'chat', 'data-status': status },
    h('h1', null, 'useChat on Sluice'),
    h(
      'div',
      { 'data-testid': 'messages' },
      messages.map((message) =>
        h(
          'div',
          {
            key: message.id,
            className: `message ${message.role}`,
            'data-testid': 'message',
            'data-role': message.role,
            'data-id': message.id,
          },
          textOf(message),
        ),
      ),
    ),
    error ? h('p', { className: 'error', 'data-testid': 'error' }, String(error?.stack ?? error)) : null,
    h(
      'form',
      { onSubmit },
      h('input', {
        'data-testid': 'prompt',
        value: input,
        placeholder: 'Say something',
        onChange: (event) => setInput(event.target.value),
      }),
      h('button', { type: 'submit', 'data-testid': 'send', disabled: status !== 'ready' && status !== 'error' }, 'Send'),
      h('button', { type: 'button', 'data-testid': 'stop', onClick: onStop }, 'Stop'),
    ),
    h('p', { 'data-testid': 'status' }, `status: ${status}`),
  );
}

createRoot(document.getElementById('root')).render(h(App));
