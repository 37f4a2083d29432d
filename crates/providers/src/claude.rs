//! Claude's extended-thinking rules, shared by the providers that reach Claude models
//! (`anthropic` directly, `bedrock` through Converse's additional model fields).

use relais_core::{ChatRequest, Error};

/// Claude's smallest thinking budget.
pub(crate) const MIN_THINKING_BUDGET: u32 = 1024;

/// The output cap and the thinking budget, which constrain each other: Claude counts thinking
/// inside `max_tokens` and requires the budget to be below it. `default_max_tokens` is the cap
/// for requests that name none (`None`: send none and let the vendor apply the model's maximum,
/// which is above every budget an effort level gives). `provider` names the caller in errors.
pub(crate) fn thinking_budget(
    req: &ChatRequest,
    default_max_tokens: Option<u32>,
    provider: &str,
) -> Result<(Option<u32>, Option<u32>), Error> {
    // (budget, whether the client named it in tokens)
    let requested = match &req.reasoning {
        None => None,
        Some(r) => match (r.budget_tokens, r.effort.as_deref()) {
            // A zero budget means "no thinking", as in Gemini's thinkingBudget.
            (Some(0), _) => None,
            (Some(tokens), _) => Some((tokens, true)),
            (None, Some(effort)) => effort_budget(effort, provider)?.map(|tokens| (tokens, false)),
            (None, None) => None,
        },
    };
    let Some((tokens, explicit)) = requested else {
        return Ok((req.max_output_tokens.or(default_max_tokens), None));
    };
    let (max_tokens, tokens) = match req.max_output_tokens {
        // The client's cap covers thinking too, as OpenAI's max_completion_tokens covers
        // reasoning. A budget the client named is sent as is (Claude explains a conflict better
        // than a guess would); one derived from an effort level shrinks to fit the cap.
        Some(cap) if explicit || tokens < cap => (Some(cap), tokens),
        Some(cap) => {
            let room = cap.saturating_sub(1);
            if room < MIN_THINKING_BUDGET {
                return Err(Error::unsupported(format!(
                    "reasoning effort needs max output tokens above {MIN_THINKING_BUDGET} on the \
                     {provider} provider, whose thinking budget starts there; got {cap}"
                )));
            }
            (Some(cap), room)
        }
        // No cap: the answer keeps the default room on top of the thinking budget.
        None => (default_max_tokens.map(|d| d.saturating_add(tokens)), tokens),
    };
    Ok((max_tokens, Some(tokens)))
}

/// Thinking budget for an effort level. Claude takes budgets in tokens: `low` is its minimum and
/// each step up quadruples it. `xhigh` and `max` get 24576, the most that still fits, with the
/// default room for the answer, under the smallest output limit of a thinking model (32000,
/// Claude Opus 4). `none` turns thinking off.
fn effort_budget(effort: &str, provider: &str) -> Result<Option<u32>, Error> {
    Ok(match effort {
        "none" => None,
        "minimal" | "low" => Some(MIN_THINKING_BUDGET),
        "medium" => Some(4096),
        "high" => Some(16_384),
        "xhigh" | "max" => Some(24_576),
        other => {
            return Err(Error::unsupported(format!(
                "reasoning effort '{other}' is not supported by the {provider} provider; \
                 use none, minimal, low, medium, high, xhigh or max"
            )));
        }
    })
}
