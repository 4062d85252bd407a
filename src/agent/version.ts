export const AGENT_VERSION = "0.1.0";
export const AGENT_PROTOCOL_VERSION = "hako.agent.v1";
export const AGENT_CHANNEL_NAME = "agent.channel.0";
export const SHARED_TAG = "hakoShared";
export const GUEST_SHARED_DIR = "/run/hako/shared";
