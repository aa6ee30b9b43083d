// Bad input: an expired session, and a family member opening another resident's page, each
// get a clear message and nothing breaks.
import { config, person, shot, byTestId, signIn, check, scenario } from './lib.mjs';

await scenario('bad_input', async (browser) => {
  // The console's session expires (this node's sessions last a few seconds).
  const { page: console_ } = await person(browser, 'console');
  await signIn(console_, `${config.short_session_web_url}/console`, config.operator, config.password);
  await byTestId(console_, 'me').waitFor();
  await console_.waitForTimeout(config.session_ttl_ms + 1000);
  await byTestId(console_, 'status').selectOption('3');
  await byTestId(console_, 'error').filter({ hasText: /会话已过期|expired/ }).waitFor();
  await console_.locator('#username').waitFor();
  await shot(console_, '31-console-session-expired');
  // Signing in again works.
  await console_.fill('#username', config.operator);
  await console_.fill('#password', config.password);
  await byTestId(console_, 'sign-in').click();
  await byTestId(console_, 'me').waitFor();

  // A family member opens another resident's page.
  const { page: family } = await person(browser, 'family');
  await signIn(family, `${config.web_url}/family`, config.family_user, config.password);
  await byTestId(family, 'relatives').filter({ hasText: config.resident_name }).waitFor();
  await family.goto(`${config.web_url}/family#resident=${config.other_resident_id}`);
  await family.reload();
  const error = byTestId(family, 'error').filter({ hasText: /无权|may not/ });
  await error.waitFor();
  const text = await error.innerText();
  check(!text.includes(config.other_resident_name), 'the other resident\'s name is not shown');
  await byTestId(family, 'relatives').filter({ hasText: config.resident_name }).waitFor();
  await shot(family, '32-family-not-yours');
});
