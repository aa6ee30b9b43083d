// Proactive care on the tablet emulator: a reminder appears with its confirm button and goes
// away when confirmed; a content item from the station appears and is opened.
import { config, person, shot, byTestId, check, scenario } from './lib.mjs';

await scenario('care', async (browser) => {
  const { page: tablet } = await person(browser, 'tablet');
  await tablet.goto(`${config.web_url}/tablet`);
  await byTestId(tablet, 'credentials').fill(config.credentials_json);
  await byTestId(tablet, 'connect').click();
  await byTestId(tablet, 'tablet-state').filter({ hasText: /^\s*connected\s*$/ }).waitFor();

  // The content item sent before the tablet connected arrives from the outbox.
  const item = byTestId(tablet, 'content-item').filter({ hasText: config.content_title });
  await item.waitFor();
  await shot(tablet, '41-content-received');
  await item.locator('[data-testid="content-open"]').click();
  await item.locator('[data-testid="content-body"]').filter({ hasText: config.content_body }).waitFor();

  // The reminder falls due a few seconds after the page connects.
  const reminder = byTestId(tablet, 'reminder');
  await byTestId(tablet, 'reminder-title').filter({ hasText: config.reminder_title }).waitFor({ timeout: 20000 });
  check(!(await reminder.isHidden()), 'the reminder is shown');
  await shot(tablet, '42-reminder-shown');
  await byTestId(tablet, 'reminder-confirm').click();
  await reminder.waitFor({ state: 'hidden' });
  await shot(tablet, '43-reminder-confirmed');
});
