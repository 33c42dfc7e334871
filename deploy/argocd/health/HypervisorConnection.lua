-- Argo CD health check for mcs.imaging.dev/v1alpha1 HypervisorConnection (mcs-operator).
-- Degraded while the connection raises alerts (a missing storage root or credentials Secret),
-- Healthy when Ready.
-- BEGIN mcs-operator shared part (identical in every mcs.imaging.dev health check; Lua 5.1
-- without the string library, as Argo CD runs custom health checks)
local RUNNING_STATES = {
  Processing = true,
  LocatingResources = true,
  ConsolidatingMasterImage = true,
  ReplicatingMasterImage = true,
  StoringImageVersionSpec = true,
  CreatingMachines = true,
  CommittingScheme = true,
}

local function verdict(status, message)
  return { status = status, message = message }
end

local function text(value)
  if value == nil then
    return ""
  end
  return tostring(value)
end

-- The condition of the given type in status.conditions (a list keyed by type), or nil.
local function condition(o, kind)
  local conditions = o.status.conditions
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function holds(o, kind)
  local c = condition(o, kind)
  return c ~= nil and c.status == "True"
end

-- "Reason: message" of a condition, or whichever of the two is set.
local function describe(c)
  local reason, message = text(c.reason), text(c.message)
  if message == "" then
    return reason
  end
  if reason == "" then
    return message
  end
  return reason .. ": " .. message
end

-- No status yet, or a status written for an older generation of the spec.
local function waiting(o)
  if type(o.status) ~= "table" then
    return verdict("Progressing", "Waiting for the operator: no status yet")
  end
  local generation = type(o.metadata) == "table" and o.metadata.generation or nil
  local observed = o.status.observedGeneration
  if type(generation) == "number" and (type(observed) ~= "number" or observed < generation) then
    return verdict("Progressing", "Waiting for the operator to observe generation "
      .. text(generation) .. " (status is for generation " .. text(observed or "none") .. ")")
  end
  return nil
end

-- status.task: running is Progressing; failed or canceled is Degraded; Finished decides nothing.
local function task(o)
  local t = o.status.task
  if type(t) ~= "table" or t.taskState == nil then
    return nil
  end
  local running = RUNNING_STATES[t.taskState] == true
  if t.workflowStatus ~= nil then
    running = t.workflowStatus == "Running"
  end
  local name = text(t.taskType or "Task") .. " task " .. text(t.taskState)
  if running then
    local message = name .. " " .. text(t.taskProgress or 0) .. "%"
    if t.currentOperation ~= nil and t.currentOperation ~= "" then
      message = message .. " (" .. text(t.currentOperation) .. ")"
    end
    return verdict("Progressing", message)
  end
  if t.taskState == "Finished" then
    return nil
  end
  local message = name
  local e = t.terminatingError
  if type(e) == "table" and e.message ~= nil and e.message ~= "" then
    message = message .. ": " .. text(e.message)
  end
  return verdict("Degraded", message .. " (annotate mcs.imaging.dev/retry to run it again)")
end

local function degraded(o)
  if holds(o, "Degraded") then
    return verdict("Degraded", describe(condition(o, "Degraded")))
  end
  return nil
end

local function progressing(o)
  if holds(o, "Progressing") then
    return verdict("Progressing", describe(condition(o, "Progressing")))
  end
  return nil
end

-- Ready=True is Healthy; note (optional) is added to the message.
local function ready(o, note)
  if not holds(o, "Ready") then
    return nil
  end
  local message = describe(condition(o, "Ready"))
  if note ~= nil then
    if message ~= "" then
      message = message .. "; "
    end
    message = message .. note
  end
  return verdict("Healthy", message)
end

-- Ready is not True: status (default Progressing) with its reason; no Ready yet is Progressing.
local function not_ready(o, status)
  local c = condition(o, "Ready")
  if c == nil then
    return verdict("Progressing", "Waiting for the operator: no Ready condition yet")
  end
  return verdict(status or "Progressing", "Not ready: " .. describe(c))
end
-- END mcs-operator shared part

return waiting(obj) or degraded(obj) or ready(obj) or progressing(obj) or not_ready(obj)
