import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';

import '../shared/base.css';
import './chat.css';
import { App } from './App';

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
